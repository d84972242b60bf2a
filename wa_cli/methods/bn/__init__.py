"""BatchNorm re-estimation: update_bn semantics, tensor-file batches, user code and the
checkpoint-to-checkpoint command behind ``wa bn-recalibrate``."""
