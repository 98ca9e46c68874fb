"""Face detection (data path, step 2): pre-processing, the TFLite runtime and delegates, the model manifest,
decoders, tiling and the pipeline that ties them together."""
