"""GPU health: XIDs classified by NVIDIA's XID catalogue (xid_catalogue.json), row remaps, uncorrectable
ECC and sustained slowdowns, folded into one state per GPU with its reason and recommended action."""
