"""The shared photographs grouped by person (../shared/PROVENANCE.md), for identification tests and benchmarks."""

GROUPS = {
    "obama": ["fr_obama.jpg", "fr_obama1.jpg", "fr_obama2.jpg", "fr_obama3.jpg"],
    "biden": ["fr_biden.jpg", "fr_biden2.jpg"],
    "kit": ["fr_kit_harington1.jpg", "fr_kit_harington2.jpg", "fr_kit_harington3.jpg"],
    "rose": ["fr_rose_leslie1.jpg", "fr_rose_leslie2.jpg"],
    "alex": ["fr_alex_lacamoire1.jpg", "fr_alex_lacamoire2.png"],
    "ivan": ["mtcnn_ivan.jpg"],
    "grace": ["coral_grace_hopper.bmp"],
}
MODELS = ("mobilefacenet_int8.tflite", "mobilefacenet_float32.tflite")
