"""Language models: layer-by-layer calibration, GPTQ, AWQ, SparseGPT, Wanda, and their artefacts."""
