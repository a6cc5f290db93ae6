"""Who is in the mesh: invites, roster, pairing, provisioning, health, firewall, keeper."""
