"""Tissue labels used while painting a phantom slice, and the HU of its materials."""

# tissue labels used while painting
AIR, BODY, CAVITY, LUNG_R, LUNG_L, MEDIAST, AIRWAY, GAS, BONE, ORGAN, TABLE, PAD, FLUID = range(13)
LUNGS = (1 << LUNG_R) | (1 << LUNG_L)
INNER = (1 << CAVITY) | LUNGS | (1 << MEDIAST)

#: HU of the materials
HU_AIR, HU_FAT, HU_MUSCLE, HU_BLOOD, HU_LIVER, HU_LUNG = -1000.0, -95.0, 48.0, 40.0, 58.0, -845.0
HU_CORTEX, HU_MARROW, HU_CARTILAGE = 1150.0, 270.0, 120.0
