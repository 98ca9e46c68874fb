"""Frame sources (data path, step 1): the Pi camera, webcams, video and image files, each yielding `Frame`s."""
