"""Data without torch (numpy and Pillow; imports only :mod:`segdeploy.core`).

synthetic      the procedural road-scene renderer and its classification crops
folders        segmentation and classification folder readers, validation, train/val splits
samples        labelled validation images for the export gates (``labelled_samples``)
checks         the size and normalisation checks every dataset shares
class_weights  inverse-frequency class weights from masks

The torch datasets that wrap these for training live in :mod:`segdeploy.train.datasets`.
"""
