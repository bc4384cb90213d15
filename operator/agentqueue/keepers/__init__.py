"""The shared keepers: a fixed set of loops per Redis server that do every object's
periodic work (drift checks, lag polls and scaling, sweeps, retention, SLOs), fed by the
kopf handlers. No task per object: an idle object costs an entry in a dict."""
