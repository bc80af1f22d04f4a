"""Capture role: the packet codec and (later) live and offline packet sources."""
