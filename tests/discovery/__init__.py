"""Discovery tests: pure TXT logic, the peer table, real mDNS on loopback and across namespaces."""
