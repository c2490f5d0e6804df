"""The data layer: image files and collections of them as arrays.

* :mod:`.images`: decode image files, convert arrays to what a model expects
* :mod:`.datasets`: built-in datasets, folders, IDX directories, ``.npz`` files
* :mod:`.idx`: the IDX format of MNIST and Fashion-MNIST
* :mod:`.download`: MNIST fetched into a local cache, checksums verified
* :mod:`.augment`: random augmentations for contrastive training
* :mod:`.skipreport`: the report of files passed over while building a collection
"""
