"""The XD-operation space (Roberts et al., "Rethinking Neural Operations for Diverse Tasks", NeurIPS
2021): a backbone whose convolutions are XD-operations (:mod:`raynas.ops.xd`).

The paper's space is continuous: starting from a backbone, every convolution becomes an
XD-operation ``K diag(L w) M x`` initialised to compute exactly that convolution, and the search
learns the K, L and M matrices (the architecture parameters) with weight sharing, the backbone's
weights trained alongside. An architecture record here names what the search starts from: the
backbone and the K-matrices' depth (relax's ``--kmatrix-depth`` at 1 and 2; see raynas.ops.xd);
the K, L and M found are the supernet's architecture state (``raynas.supernet.xd``), saved with it.

Backbones: He et al.'s CIFAR ResNets ``resnet20`` (relax's ``examples/resnet/trainer.py``
default), ``resnet32``, ``resnet44``, ``resnet56`` and ``resnet110`` (:mod:`raynas.ops.cifar_resnet`);
torchvision's ``resnet18``, ``resnet34`` (the first convolution takes the dataset's
channels); and the DARTS evaluation network of a published genotype, ``darts:<name>`` (e.g.
``darts:DARTS_V2``) at the config's channels and cells. Written ``<backbone>/d<depth>``, e.g.
``resnet18/d1``, or as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
from torch import nn

from raynas.config import Check, Rule, check_rules
from raynas.errors import ArchitectureError, ConfigError
from raynas.ops.cifar_resnet import DEPTHS as CIFAR_RESNETS
from raynas.ops.cifar_resnet import CifarResNet
from raynas.ops.xd import convert_to_xd
from raynas.spaces.base import OptionsSpace, expect_arch
from raynas.spaces.darts_genotype import ALIASES as GENOTYPE_ALIASES
from raynas.spaces.darts_genotype import PUBLISHED
from raynas.spaces.registry import SPACES
from raynas.types import Architecture, DatasetInfo, Decision, check_keys, decode_options

RESNETS: tuple[str, ...] = (*CIFAR_RESNETS, "resnet18", "resnet34")
_FORM = "<backbone>/d<depth>, e.g. 'resnet18/d1' or 'darts:DARTS_V2/d3'"


BACKBONE = Check(
    "item in resnets or (item[:6] == 'darts:' "
    "and any(g in genotypes or g[:1] == '{' or is_file(g) for g in [strip(item[6:])]))",
    "xd backbone: unknown {item!r}; choose one of: {join(resnets)}, darts:<genotype> (a published "
    "one: {join(genotypes)}; or its JSON, or a JSON file)",
    tables={"resnets": RESNETS, "genotypes": lambda: tuple(sorted([*PUBLISHED, *GENOTYPE_ALIASES]))},
)
"""The backbones XD converts (``item``: a backbone's name)."""


def _check_backbone(name: Any) -> None:
    if not isinstance(name, str) or BACKBONE.broken_by({"item": name}) is not None:
        raise ArchitectureError(BACKBONE.render({"item": name}))


@dataclass(frozen=True)
class XdArch(Architecture):
    """A backbone turned into XD-operations.

    Attributes:
        backbone: A CIFAR ResNet (``resnet20`` ...), ``resnet18``, ``resnet34`` or
            ``darts:<genotype name>``.
        depth: Butterfly factor products in each K, L and M (relax's ``--kmatrix-depth`` at 1 and 2).
    """

    space = "xd"

    backbone: str
    depth: int = 1

    def __post_init__(self) -> None:
        _check_backbone(self.backbone)
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise ArchitectureError(f"xd depth must be a positive integer, got {self.depth!r}")

    def __str__(self) -> str:
        return f"{self.backbone}/d{self.depth}"

    @classmethod
    def parse(cls, text: str) -> XdArch:
        """Read ``<backbone>/d<depth>``."""
        backbone, _, depth = text.strip().rpartition("/")
        if not backbone or not depth.startswith("d") or not depth[1:].isdigit():
            raise ArchitectureError(f"{text!r} is not an xd architecture; write {_FORM}")
        return cls(backbone, int(depth[1:]))

    def to_dict(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "depth": self.depth}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> XdArch:
        if not isinstance(data, dict):
            raise ArchitectureError(f"an xd architecture is a JSON object, got {type(data).__name__}")
        check_keys(data, ("backbone", "depth"), "an xd architecture")
        return cls(data["backbone"], data["depth"])


@dataclass(frozen=True)
class XdSpaceConfig:
    """The backbones and depths, and the DARTS backbones' size.

    A search (``raynas.supernet.xd``) converts the first backbone at the first depth: a search job
    lists the one it searches first.

    Attributes:
        backbones: CIFAR ResNets (``resnet20``, ``resnet32``, ``resnet44``, ``resnet56``,
            ``resnet110``), ``resnet18``, ``resnet34``, ``darts:<genotype>`` (a DARTS published
            genotype).
        depth_choices: K-matrix depths (relax: 1; 3 in its permuted-CIFAR script).
        channels: A DARTS backbone's initial channels (0: the paper's evaluation network, 36).
        layers: A DARTS backbone's cells (0: 20).
    """

    backbones: tuple[str, ...] = ("resnet18", "darts:DARTS_V2")
    depth_choices: Annotated[tuple[int, ...], Rule(ge=1)] = (1, 2, 3)
    channels: Annotated[int, Rule(ge=0)] = 0
    layers: Annotated[int, Rule(ge=0)] = 0

    checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "backbones and len(set(backbones)) == len(backbones)",
            "space.backbones must list backbones once each, got {backbones!r}",
        ),
        Check(BACKBONE.holds, "space.backbones: " + BACKBONE.says, each="backbones", tables=BACKBONE.tables),
        Check(
            "depth_choices and len(set(depth_choices)) == len(depth_choices)",
            "space.depth_choices must be positive integers, once each, got {depth_choices!r}",
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "space")
        for b in self.backbones:  # a DARTS genotype is read by the darts space
            if b.startswith("darts:"):
                try:
                    SPACES.create("darts").parse(b[6:])
                except ArchitectureError as e:
                    raise ConfigError(f"space.backbones: {e}") from None


def backbone_network(
    name: str, dataset: DatasetInfo, *, channels: int | None = None, layers: int | None = None
) -> nn.Module:
    """The backbone ``name`` for ``dataset``, with ordinary convolutions.

    Args:
        name: A CIFAR ResNet (``resnet20`` ... ``resnet110``), ``resnet18``, ``resnet34`` or
            ``darts:<genotype>``.
        dataset: Input channels, classes.
        channels: A DARTS backbone's initial channels (None: 36).
        layers: A DARTS backbone's cells (None: 20); a ResNet's blocks per stage at most.
    """
    _check_backbone(name)
    if name.startswith("darts:"):
        darts = SPACES.create("darts")
        return darts.build(darts.parse(name[6:]), dataset, channels=channels, layers=layers)
    if name in CIFAR_RESNETS:
        blocks = CIFAR_RESNETS[name] if layers is None else min(CIFAR_RESNETS[name], layers)
        return CifarResNet(blocks, dataset.num_classes, dataset.in_channels)
    blocks = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}[name]
    if layers is not None:
        blocks = [min(b, layers) for b in blocks]
    import torchvision  # imports torch._dynamo (seconds): only when a ResNet backbone is built

    net = torchvision.models.resnet.ResNet(
        torchvision.models.resnet.BasicBlock, blocks, num_classes=dataset.num_classes
    )
    if dataset.in_channels != 3:
        net.conv1 = nn.Conv2d(dataset.in_channels, 64, 7, stride=2, padding=3, bias=False)
    return net


@SPACES.register(
    "xd", config=XdSpaceConfig,
    traits={"choices": True},
)
class XdSpace(OptionsSpace[XdArch]):
    """Backbones turned into XD-operations (see the module docstring).

    Args:
        config: The backbones and depths (default: ResNet-18 and DARTS_V2, depths 1 to 3).
    """

    architecture_type = XdArch
    reference_dataset = "cifar10"

    def __init__(self, config: XdSpaceConfig | None = None) -> None:
        self.config = config or XdSpaceConfig()

    def decisions(self) -> tuple[Decision, ...]:
        """The backbone and the K-matrix depth."""
        c = self.config
        return (Decision("backbone", c.backbones), Decision("depth", tuple(map(str, c.depth_choices))))

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        a = self.check(arch)
        return (self.config.backbones.index(a.backbone), self.config.depth_choices.index(a.depth))

    def decode(self, values: tuple[int, ...] | list[int]) -> XdArch:
        backbone, depth = decode_options(self.decisions(), values)
        return XdArch(backbone, int(depth))

    def contains(self, arch: Architecture) -> bool:
        return (
            isinstance(arch, XdArch)
            and arch.backbone in self.config.backbones
            and arch.depth in self.config.depth_choices
        )

    def parse(self, text: str) -> XdArch:
        """JSON text or file, or ``<backbone>/d<depth>``."""
        stripped = text.strip()
        arch = XdArch.read_json(stripped, form='{"backbone": "resnet18", "depth": 1}')
        return arch if arch is not None else XdArch.parse(stripped)

    def build(
        self,
        arch: Architecture,
        dataset: DatasetInfo,
        *,
        channels: int | None = None,
        layers: int | None = None,
        auxiliary: bool = False,
        drop_path_prob: float = 0.0,
    ) -> nn.Module:
        """The backbone of ``arch`` for ``dataset`` with every convolution an XD-operation that
        computes it exactly (on ``dataset.image_size`` square inputs).

        Args:
            arch: An :class:`XdArch`.
            dataset: Input channels, classes and image size.
            channels: A DARTS backbone's initial channels (None: the config's, else 36).
            layers: Cells of a DARTS backbone, blocks per stage of a ResNet at most (None: the config's).
            auxiliary: Ignored (no auxiliary head).
            drop_path_prob: Ignored.
        """
        arch = expect_arch(arch, XdArch)
        c = self.config
        backbone = backbone_network(
            arch.backbone, dataset, channels=channels or c.channels or None, layers=layers or c.layers or None
        )
        example = torch.zeros(1, *dataset.image_shape)
        return convert_to_xd(backbone, example, depth=arch.depth)
