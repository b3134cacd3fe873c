"""sgaus pipeline: datasets and cameras, stages of the fit, evaluation, simulation of assets."""
