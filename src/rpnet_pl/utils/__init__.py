"""What every layer may use: errors, atomic file I/O, progress lines, host memory."""
