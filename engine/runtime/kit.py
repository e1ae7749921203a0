"""The stage kit: what every keyed stage does around its pure rules, written once.

A stage is its decode type, its key, its pure core and its routes. Every stage used to write the same prelude
before its rules and the same finish after them; :class:`KeyedLogic` does both, in this order, and a stage
declares only what differs (class attributes, and a few methods it overrides):

1. **Decode** the record to ``record_type`` (a tagged union of msgspec structs). Bytes that are not one are
   dead-lettered with the decoder's reason (``wire.WireError``), and the partition moves on.
2. **Broadcast configuration** (``broadcasts``: review rules, layouts, shipping and ledger policies). A publisher
   writes one copy into every partition of the inbox, and each partition keeps its own copy under a key of its
   own, so that it sees each version at its own point of its own log — a replay sees the same. A version above
   the copy's replaces it; an equal or lower one (a redelivery, a stale publisher) is only noted. Configuration
   has no single writer: it is never routed and does not move time.
3. **Ticks** (``schemas.fulfilment.Tick``): the passage of time as a record, written into every partition by its
   owner. A tick moves the partition's event time to its ``ts`` and goes to :meth:`KeyedLogic.on_tick`; it has
   no key, so it is never routed.
4. **Routing.** Every other record must be on the partition its key hashes to (:meth:`KeyedLogic.route`); one
   that is not is dead-lettered (``misrouted``): applying it would give its key a second writer.
5. **Time.** The partition's event time moves forward to :meth:`KeyedLogic.event_time` — the record's time by
   default; a stage whose rules run on the item's own time (a stock command's ``ts``, a channel's modification
   time with a cap) says so, and ``None`` leaves it where it is. This happens before any state is read, so that
   entries whose time has passed read as absent.
6. **The core.** :meth:`KeyedLogic.handle` loads the state, calls the stage's pure rules and returns a
   :class:`Step` (or a core's own result with the same ``outputs``, ``note`` and ``refused``; or None when it
   did everything itself).
7. **Finish** (:meth:`KeyedLogic.finish`): the step's state is written to ``state_table`` when it changed, with
   its expiry (the same function rebuilds the expiry index from the store, so the two cannot disagree); each
   output goes to the topics its type is routed to (``routes``); the note is counted; a refusal dead-letters
   the input with its reason — never silently dropped.

The kit decides nothing: every rule stays in the stage's core, and a stage's outputs and state are byte for byte
what its own prelude made of them (the determinism test replays every stage against what the engine wrote).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from engine.runtime.work import Input, Logic, PartitionWork
from schemas import wire
from schemas.deadletter import ReasonCode
from schemas.fulfilment import Tick

S = TypeVar("S")

#: Where outputs of one type go: a topic (the output itself, keyed by its ``key``), or ``(topic, convert)``: what
#: ``convert(output)`` returns, keyed by its own ``key`` (a wrapper for another stage's inbox), or nothing if None.
Route = str | tuple[str, Callable[[Any], Any]]


@dataclass(slots=True)
class Step(Generic[S]):
    """What a core made of one record: the state after it (written only if ``changed``), outputs in the order
    they are sent, a note (counted in the stage's stats), ``counts`` (notes counted by more than one), and a
    refusal ``(reason code, detail)``: a valid record that cannot be applied is dead-lettered, never lost."""

    state: S | None = None
    changed: bool = False
    outputs: list[Any] = field(default_factory=list)
    note: str = ""
    refused: tuple[str, str] | None = None
    counts: dict[str, int] | None = None


class Finishable(Protocol):
    """What :meth:`KeyedLogic.finish` needs of a core's result: a :class:`Step`, or a core's own result type with
    the same three fields (the order stage's)."""

    @property
    def outputs(self) -> list[Any]: ...

    @property
    def note(self) -> str: ...

    @property
    def refused(self) -> tuple[str, str] | None: ...


def _itself(record: Any) -> Any:
    return record


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A configuration record every partition keeps its own copy of (module docstring, point 2)."""

    record: type  # the record type on the inbox
    table: str
    stored: type  # what the table holds
    key: Callable[[str, int], str]  # (tenant, partition) -> the key of the partition's copy
    what: str  # notes: <what>_applied, <what>_not_newer
    value: Callable[[Any], Any] = _itself  # what of the record is stored
    tenant: Callable[[Any], str] = attrgetter("tenant")  # of a stored value
    version: Callable[[Any], int] = attrgetter("version")  # of a stored value


class KeyedLogic(Logic, Generic[S]):
    """A stage whose records each have one writer, by key (module docstring). Subclasses set ``name``,
    ``inputs``, ``tables``, ``record_type``, ``partitions`` and ``routes`` (output type -> routes), optionally
    ``broadcasts`` and ``state_table``/``state_type``, and implement :meth:`handle`."""

    record_type: Any = None
    broadcasts: tuple[Broadcast, ...] = ()
    state_table: str = ""  # the table a Step's state is written to ("": the stage writes its state itself)
    state_type: Any = None
    partitions: int = 0
    routes: dict[type, tuple[Route, ...]]
    _configs: ClassVar[dict[type, Broadcast]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._configs = {b.record: b for b in cls.broadcasts}

    # -- what a stage declares by overriding -------------------------------------------------------------
    def decode(self, work: PartitionWork, record: Input) -> Any:
        """The record as the stage's type, or None when it was dead-lettered."""
        try:
            return wire.decode(record.value, self.record_type)
        except wire.WireError as exc:
            work.dead_letter(record, exc.reason, exc.detail)
            return None

    def route(self, item: Any) -> tuple[str, str | None]:
        """The key that decides the record's writer, and the tenant a misrouted record's dead letter names."""
        return item.key, getattr(item, "tenant", None)

    def event_time(self, item: Any, record: Input) -> int | None:
        """The time the partition's event time moves to (never back); None: it stays."""
        return record.timestamp_ms

    def handle(self, work: PartitionWork, record: Input, item: Any) -> Finishable | None:
        """Load the state, call the core, return its step (None: nothing left to finish)."""
        raise NotImplementedError

    def on_tick(self, work: PartitionWork, record: Input, tick: Tick) -> None:
        """Time passed (the event time is at ``tick.ts`` already): release what waited for it."""

    def tenant_of(self, item: Any) -> str | None:
        """The tenant a refusal's dead letter names."""
        return getattr(item, "tenant", None)

    def state_key(self, item: Any, state: S) -> str:
        return item.key

    def touch(self, state: S, now: int) -> None:
        """Stamp a state about to be written with the time (its expiry may run from it)."""

    def keep_until(self, state: S) -> int | None:
        """When an entry of ``state_table`` may be forgotten (event time); None: kept."""
        return None

    # -- the prelude --------------------------------------------------------------------------------------
    def process(self, work: PartitionWork, record: Input) -> None:
        item = self.decode(work, record)
        if item is None:
            return
        config = self._configs.get(type(item))
        if config is not None:
            self.apply_config(work, record.partition, config, item)
            return
        if type(item) is Tick:
            work.advance(item.ts)
            self.on_tick(work, record, item)
            return
        key, tenant = self.route(item)
        if work.misrouted(record, key, self.partitions, tenant):
            return
        time = self.event_time(item, record)
        if time is not None:
            work.advance(time)
        step = self.handle(work, record, item)
        if step is not None:
            self.finish(work, record, item, step)

    def apply_config(self, work: PartitionWork, partition: int, config: Broadcast, item: Any) -> None:
        value = config.value(item)
        key = config.key(config.tenant(value), partition)
        current = work.get_as(config.table, key, config.stored)
        version = None if current is None else config.version(current)
        work.put_if_newer(config.table, key, value, config.version(value), version, config.what)

    def config(self, work: PartitionWork, config: Broadcast, tenant: str, partition: int) -> Any:
        """This partition's copy of a tenant's configuration, None if it has seen none. Read on every record, so
        decoded once per version and shared (``work.get_config``): read-only."""
        return work.get_config(config.table, config.key(tenant, partition), config.stored)

    # -- the finish ---------------------------------------------------------------------------------------
    def finish(self, work: PartitionWork, record: Input, item: Any, step: Finishable, now: int | None = None) -> None:
        """Write the step's state (stamped ``now``, the record's time unless told), send its outputs, count its
        notes, dead-letter a refusal."""
        self.save(work, item, step, work.now if now is None else now)
        self.send(work, step)
        if step.refused is not None:
            reason, detail = step.refused
            work.dead_letter(record, ReasonCode(reason), detail, self.tenant_of(item))

    def send(self, work: PartitionWork, step: Finishable) -> None:
        """A step's outputs, each to its routes, and its notes (for steps that are not one record's)."""
        for out in step.outputs:
            self.emit(work, out)
        if step.note:
            work.note(step.note)
        counts = getattr(step, "counts", None)
        if counts:
            for what, n in counts.items():
                work.note(what, n)

    def save(self, work: PartitionWork, item: Any, step: Any, now: int) -> None:
        """The step's state to ``state_table`` at :meth:`state_key`, when it changed."""
        if not self.state_table or not step.changed or step.state is None:
            return
        state = step.state
        self.touch(state, now)
        work.put(self.state_table, self.state_key(item, state), state, expires_at=self.keep_until(state))

    def emit(self, work: PartitionWork, out: Any) -> None:
        """One output to every topic its type is routed to."""
        for route in self.routes[type(out)]:
            if type(route) is str:
                work.emit(route, out.key, out)
            else:
                topic, convert = route
                sent = convert(out)
                if sent is not None:
                    work.emit(topic, sent.key, sent)

    def expires_at(self, table: str, value: bytes) -> int | None:
        if table == self.state_table:
            return self.keep_until(wire.decode_state(value, self.state_type))
        return None
