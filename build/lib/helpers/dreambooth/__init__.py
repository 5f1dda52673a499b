"""DreamBooth: the trainer, its command line, class images for prior preservation, identifiers."""
