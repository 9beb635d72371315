"""Device mesh and the map from logical axis names to mesh axes.

This file alone knows about the mesh: models only name their axes, and the rules in
`config.mesh.rules` decide whether a run is data-parallel, FSDP or tensor-parallel.
"""

import math

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor")


def make_mesh(shape: dict, devices=None) -> Mesh:
  """A mesh with axes (data, fsdp, tensor); one size may be -1 (all remaining devices).

  Auto axis types keep GSPMD-style propagation from the logical constraints.
  """
  devices = jax.devices() if devices is None else devices
  unknown = sorted(set(shape) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"mesh.shape has unknown axis {unknown[0]!r}; axes are {MESH_AXES}.")
  sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh.shape={dict(shape)}: at most one axis may be -1.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(
        f"mesh.shape={dict(shape)}: {len(devices)} devices are not divisible by {known}."
      )
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(
      f"mesh.shape={dict(shape)} needs {math.prod(sizes)} devices but "
      f"{len(devices)} are present; set one axis to -1 to take the rest."
    )
  device_grid = np.asarray(devices).reshape(sizes)
  return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def rules_tuple(rules) -> tuple:
  """Config rules (a list of [logical, mesh axis or list or None]) as flax wants them."""
  return tuple(
    (name, tuple(axes) if isinstance(axes, (list, tuple)) else axes) for name, axes in rules
  )


def logical_shardings(abstract_tree, mesh: Mesh, rules) -> object:
  """NamedShardings for a tree whose leaves are boxed with logical axis names."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules_tuple(rules))


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
  """Sharding of a (batch, ...) input array: the batch dimension as the rules say."""
  spec = nn.logical_to_mesh_axes(("batch",), rules_tuple(rules))
  return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """Assembles each process's rows of the batch into global arrays."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
