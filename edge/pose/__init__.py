"""Head pose (data path, step 3): from detector keypoints or the face-landmark mesh to yaw, pitch and roll."""
