"""The data model of channel dependencies: channel spaces, their members, the groups they form.

A *channel space* is a set of channels that must be pruned together, position by
position: channel ``c`` of the space is channel ``c`` of every tensor and weight
that holds it. Spaces are united (a residual add), cut (a ``torch.chunk`` boundary
falling inside one) and frozen (never pruned, with the reason) by the engines that
find them: :mod:`torchslim.graph.fxwalk` on a torch.fx trace and
:mod:`torchslim.graph.blocks` by module-level rules. A space whose members hold it
is a :class:`Group` once the engine is done.

Example:
    >>> s = Spaces()
    >>> a, b = s.new(4), s.new(4)
    >>> s.members[a].append(Member("conv1", "out"))
    >>> s.members[b].append(Member("conv2", "out"))
    >>> s.union(a, b)
    >>> [m.module for m in s.members[s.find(b)]]
    ['conv1', 'conv2']
    >>> rest = s.split(a, 1)                       # channels 1..3 become a space of their own
    >>> s.channels[s.find(a)], s.channels[rest], [m.offset for m in s.members[rest]]
    (1, 3, [1, 1])
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Member:
    """One place a channel space is stored: ``role`` of ``module``; channel ``c`` of the group occupies
    features ``offset + c*inner ... offset + (c+1)*inner - 1`` of that module's dimension.

    Roles: ``out`` (Conv/Linear output rows), ``in`` (Conv/Linear input columns),
    ``dw`` (depthwise Conv channels), ``emb`` (an Embedding's columns, a producer), ``bn`` (BatchNorm), ``ln`` (LayerNorm),
    ``attn_in`` (the q/k/v projections' input columns), ``attn_out`` (the output projection's rows),
    ``mha_inner`` (the features inside the heads of an ``nn.MultiheadAttention``: q/k/v rows and
    out_proj columns), ``param`` (a parameter the model holds and uses directly, a class token or
    positions: ``module`` is its owner, ``param`` its attribute name, sliced along its last dimension).
    A grouped convolution's channels are pruned inside its groups: its input (output)
    is a member once per group, at offsets one group's width apart.
    """

    module: str
    role: str
    offset: int = 0
    inner: int = 1
    param: str = ""


@dataclass
class Group:
    """Channels that must be pruned together."""

    id: int
    channels: int
    members: list[Member] = field(default_factory=list)
    frozen: str | None = None

    @property
    def producers(self) -> list[str]:
        """The layers whose outputs hold the group's channels (each once, in member order)."""
        return list(dict.fromkeys(m.module for m in self.members if m.role in ("out", "attn_out", "mha_inner", "emb")))

    @property
    def prunable(self) -> bool:
        return self.frozen is None and bool(self.producers)


@dataclass
class HeadGroup:
    """The heads of one attention module (pruned by slicing its q/k/v/out projections)."""

    module: str
    heads: int
    head_dim: int


@dataclass
class Seg:
    """A run of a tensor's channel dimension: ``channels`` channels of ``space``, ``inner`` features each."""

    space: int
    channels: int
    inner: int = 1


@dataclass
class Layout:
    """The channel dimension ``cdim`` of a tensor and the runs of channel spaces it is made of."""

    cdim: int  # channel dimension (normalised, non-negative)
    segs: list[Seg]

    @property
    def channels(self) -> int:
        return sum(s.channels for s in self.segs)

    @property
    def width(self) -> int:
        """Features along the channel dimension."""
        return sum(s.channels * s.inner for s in self.segs)

    def runs(self) -> list[tuple[int, int]]:
        """``(channels, inner)`` of every run."""
        return [(s.channels, s.inner) for s in self.segs]

    def bounds(self) -> set[int]:
        """Feature positions where one run ends and the next begins."""
        out, pos = set(), 0
        for seg in self.segs[:-1]:
            pos += seg.channels * seg.inner
            out.add(pos)
        return out

    def take(self, widths: list[int]) -> list[Layout]:
        """Cut into consecutive parts of ``widths`` features (the runs already end at the parts' boundaries)."""
        parts: list[Layout] = []
        segs = list(self.segs)
        for width in widths:
            taken: list[Seg] = []
            while segs and sum(s.channels * s.inner for s in taken) < width:
                taken.append(segs.pop(0))
            parts.append(Layout(self.cdim, taken))
        return parts


class Spaces:
    """A union-find over channel spaces: their sizes, members and frozen reasons."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.channels: list[int] = []
        self.members: list[list[Member]] = []
        self.frozen: list[str | None] = []

    def new(self, channels: int, frozen: str | None = None) -> int:
        i = len(self.parent)
        self.parent.append(i)
        self.channels.append(channels)
        self.members.append([])
        self.frozen.append(frozen)
        return i

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.channels[ra] != self.channels[rb]:
            self.freeze(ra, "coupled tensors have different channel counts")
            self.freeze(rb, "coupled tensors have different channel counts")
        self.parent[rb] = ra
        self.members[ra] += self.members[rb]
        self.frozen[ra] = self.frozen[ra] or self.frozen[rb]

    def freeze(self, i: int, reason: str) -> None:
        r = self.find(i)
        if self.frozen[r] is None:
            self.frozen[r] = reason

    def split(self, i: int, k: int) -> int:
        """Cut the space of ``i`` after its first ``k`` channels; returns the new space of the rest.

        Every member keeps its first ``k`` channels where they were and gives the
        rest, shifted by ``k`` channels, to the new space.
        """
        r = self.find(i)
        rest = self.new(self.channels[r] - k, self.frozen[r])
        self.channels[r] = k
        self.members[rest] = [Member(m.module, m.role, m.offset + k * m.inner, m.inner, m.param) for m in self.members[r]]
        return rest

    def groups(self) -> list[Group]:
        """One :class:`Group` per space that has members (in the order the spaces were made), members deduplicated."""
        roots: dict[int, Group] = {}
        for i in range(len(self.parent)):
            r = self.find(i)
            if r not in roots:
                roots[r] = Group(len(roots), self.channels[r], self.members[r], self.frozen[r])
        groups = [g for g in roots.values() if g.members]
        for g in groups:
            seen, uniq = set(), []
            for m in g.members:
                key = (m.module, m.role, m.offset, m.param)
                if key not in seen:
                    seen.add(key)
                    uniq.append(m)
            g.members = uniq
        return groups


def is_gate(shape: tuple[int, ...], out_shape: tuple[int, ...], cdim: int) -> bool:
    """``shape`` broadcasts to ``out_shape`` (same rank) and its channel dimension ``cdim`` is 1 or all the channels:
    a squeeze-excite gate (every channel) or a spatial map (one value for every channel).

    Example:
        >>> is_gate((2, 8, 1, 1), (2, 8, 5, 5), 1), is_gate((2, 1, 5, 5), (2, 8, 5, 5), 1), is_gate((8,), (2, 8), 1)
        (True, True, False)
    """
    if len(shape) != len(out_shape) or len(shape) < 2:
        return False
    return all(n in (1, o) for n, o in zip(shape, out_shape)) and shape[cdim] in (1, out_shape[cdim])
