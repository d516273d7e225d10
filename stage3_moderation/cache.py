"""Week 10: a content-addressed LRU cache for image embeddings and captions.

The key (service.Moderator._cached) is the tenant (which API key asked), what was computed and the
sha256 of the pixels it was computed from (images.Frame.key), so the same picture uploaded twice by
one tenant, under any file name or in another encoding, is embedded and captioned once; another
tenant's upload of it is computed afresh, so its timing tells nothing about what others sent.
The cache is bounded by entries and by bytes; the least recently used entries go first.
"""

import sys
from collections import OrderedDict
from threading import Lock

import numpy as np


def size_of(value):
    return value.nbytes if isinstance(value, np.ndarray) else sys.getsizeof(value)


class LRUCache:
    def __init__(self, max_entries=4096, max_bytes=64 * 2**20):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.entries, self.bytes = OrderedDict(), 0
        self.hits = self.misses = 0
        self.lock = Lock()  # batch workers run in threads

    def get(self, key):
        with self.lock:
            if key not in self.entries:
                self.misses += 1
                return None
            self.hits += 1
            self.entries.move_to_end(key)
            return self.entries[key]

    def put(self, key, value):
        size = size_of(value)
        if self.max_entries == 0 or size > self.max_bytes:
            return
        with self.lock:
            if key in self.entries:
                self.bytes -= size_of(self.entries.pop(key))
            self.entries[key], self.bytes = value, self.bytes + size
            while len(self.entries) > self.max_entries or self.bytes > self.max_bytes:
                _, old = self.entries.popitem(last=False)
                self.bytes -= size_of(old)

    def __len__(self):
        return len(self.entries)
