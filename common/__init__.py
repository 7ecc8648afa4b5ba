"""What both ends share, below both: the feature-map codec, message limits, credential
files and the timing helper. Imports nothing from `device`, `cloud`, `planner` or `bench`."""
