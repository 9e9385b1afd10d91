"""ncood.tune.worker_memory.release: collections scan only new objects (gc.freeze), and cyclic garbage among frozen
objects is still collected at the periodic full collection."""
import gc
import weakref

from ncood.tune import worker_memory


class Node:
    def __init__(self):
        self.other = self  # a reference cycle: only the cycle collector frees it


def test_release_freezes_survivors_and_collects_frozen_cycles_periodically():
    try:
        worker_memory.release()
        assert gc.get_freeze_count() > 0  # the survivors are in the permanent generation
        young = Node()
        young_ref = weakref.ref(young)
        del young
        worker_memory.release()
        assert young_ref() is None  # garbage allocated since the last freeze: collected at once
        old = Node()
        worker_memory.release()  # `old` survives this collection and is frozen with the rest
        old_ref = weakref.ref(old)
        del old
        worker_memory.release()
        calls = 0
        while old_ref() is not None and calls < worker_memory.FULL_COLLECTION_EVERY:
            worker_memory.release()
            calls += 1
        assert old_ref() is None  # collected at the next full collection, within FULL_COLLECTION_EVERY calls
    finally:
        gc.unfreeze()
