"""Tools that use what training builds without training: compiling for TPU and GPU targets (`aot`, `targets`)."""
