"""Data layer: VOC / COCO / synthetic readers, the group sampler, transforms, datamodules, checks."""
