"""What runs inside workspaces, copied into the images as is (standard library only)."""
