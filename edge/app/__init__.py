"""The application shell: configuration, the service loop, and the `edge-camera` command line.

Process-wide side effects (signal handlers, stderr redirection, thread counts) happen here only, in entry points.
"""
