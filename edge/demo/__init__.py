"""The quick-start demo: a private broker with throwaway certificates, the virtual camera, a printing subscriber.

The service's run path never imports this package for a real camera.
"""
