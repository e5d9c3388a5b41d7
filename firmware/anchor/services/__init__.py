"""The anchor's services, CPython only: backup, restore, capture, regeneration, the watch
list and the relay (link relay and HTTP proxy). Each takes what it uses as constructor
arguments; anchor.app builds them and hands them out."""
