"""The mesh, in three parts.

- `recorder.mesh.net`: clients of the network daemons (Syncthing's REST API, yggdrasil's admin
  socket and config, chrony's mesh time sources).
- `recorder.mesh.membership`: who is in the mesh (invites, the roster, pairing and
  provisioning through Syncthing, mesh health, the firewall, the service's keeper).
- `recorder.mesh.exchange`: what flows between members (peers' recordings into the catalogue
  and outbox, annotations, the scan hand-off after publishing).

Imports run downward only: exchange may use membership and net, membership uses net.
"""
