"""Data without torch (numpy and Pillow; imports only :mod:`segdeploy.core`).

synthetic      the procedural road-scene renderer and its classification crops
folders        segmentation and classification folder readers, validation, train/val splits
samples        labelled images at their own size: validation, evaluate, gates (``labelled_images``)
checks         the size and normalisation checks every dataset shares
class_weights  inverse-frequency class weights from masks

The torch datasets that wrap these for training live in :mod:`segdeploy.train.datasets`.
"""
