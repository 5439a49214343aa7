"""The data: sources (IDX folders, HF datasets, torchvision) decoded into uint8 splits, the IDX format (idx), the
loaders that batch them for training and evaluation, a photo turned into the model's input (images), and a CSV of
digits read for `convert` (digits_csv)."""
