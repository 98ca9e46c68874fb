"""The wire format (data path, step 4): anonymised observations, track numbers, serialisation and JSON Schemas.

Nothing but boxes, scores, head pose and track numbers can be expressed here.
"""
