"""Front-ends that turn user media into the network's conditions: audio features, face analysis, speed."""
