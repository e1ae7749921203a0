"""The invariants (I1–I4, I6) checked from the result topics against the inputs as they were sent.

The truth is what went in — the orders as the channels sent them, the stock commands as the loaders sent
them, the bad records as they were crafted — never what the engine says about them: a check that compared the
engine's outputs only with each other could pass while the engine is wrong.

* ``invariants.inputs``  what was sent (:class:`Inputs`), built by whoever sent it;
* ``invariants.collect`` what the engine wrote, read back ``read_committed`` (:class:`Outputs`);
* ``invariants.check``   the verdict (:func:`check`).
"""

from invariants.check import Verdict, check
from invariants.collect import Outputs, collect
from invariants.inputs import Inputs, SentOrder

__all__ = ["Inputs", "Outputs", "SentOrder", "Verdict", "check", "collect"]
