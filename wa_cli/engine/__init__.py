"""The engine every reducing command shares: plan (checks), chunked combination, CPU and CUDA
reducers, the run that streams into the writer, precision, device and provenance."""
