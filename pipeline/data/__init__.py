"""What sgaus reads and writes: cameras, datasets and their scene facts, Gaussians and PLY files,
frames, atomic files and run directories. Every file format is read here, in one place."""
