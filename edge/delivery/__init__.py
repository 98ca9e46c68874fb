"""Delivery (data path, step 5): the durable outbox, the MQTT publisher and frame-rate health figures.

Delivery never imports vision: it moves bytes that `edge.wire` made.
"""
