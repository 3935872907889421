"""File input and output: images, masks, atomic writes, input expansion."""
