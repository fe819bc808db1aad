"""What the dataset preparation scripts share: resumable, atomic, sharded jobs, and EGO4D hand detection."""
