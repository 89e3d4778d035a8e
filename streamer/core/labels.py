"""What the label ids mean, and which files are images: the names every layer shares.

M2FP predicts the 21 CIHP classes (the multi-person model) or the 20 LIP classes (the
single-person model, where id 10 is "Jumpsuits" and there is no "Human"). A label map may also
hold :data:`PERSON_ONLY`: a person the detector found but too small to parse.

Example:
    >>> CIHP_CLASSES[2], LIP_CLASSES[10], PERSON_ONLY
    ('Hair', 'Jumpsuits', 255)
    >>> ".png" in IMAGE_SUFFIXES
    True
"""

from __future__ import annotations

__all__ = ["CIHP_CLASSES", "IMAGE_SUFFIXES", "LIP_CLASSES", "PERSON_ONLY"]

#: The 21 CIHP classes predicted by M2FP, by id. The LIP model names id 10 "Jumpsuits".
CIHP_CLASSES: tuple[str, ...] = (
    "Background", "Hat", "Hair", "Gloves", "Sunglasses", "UpperClothes", "Dress", "Coat",
    "Socks", "Pants", "Torso-skin", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm",
    "Left-leg", "Right-leg", "Left-shoe", "Right-shoe", "Human",
)
#: The 20 LIP classes of the single-person model, by id.
LIP_CLASSES: tuple[str, ...] = CIHP_CLASSES[:10] + ("Jumpsuits",) + CIHP_CLASSES[11:20]

#: Label for "a person is here but too small to parse": callers fill the person's box with it.
PERSON_ONLY: int = 255

#: Image files read as sources, photos and evaluation images (lower-case suffixes).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
