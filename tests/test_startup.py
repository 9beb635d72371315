"""The entry point leaves the TPU out of JAX's backends only where no TPU is present."""

import os

import pytest

from bigflax import startup


@pytest.fixture
def machine(monkeypatch):
  """This process's JAX_PLATFORMS decision on a machine described by the test."""

  def decide(tpu=False, plugins=(), user_platforms=None):
    monkeypatch.setattr(startup, "tpu_present", lambda: tpu)
    monkeypatch.setattr(startup, "pjrt_plugins", lambda: set(plugins))
    monkeypatch.setenv("JAX_PLATFORMS", "")  # so that the test's value is undone after it
    monkeypatch.delenv("JAX_PLATFORMS")
    if user_platforms is not None:
      monkeypatch.setenv("JAX_PLATFORMS", user_platforms)
    startup.skip_absent_tpu()
    return os.environ.get("JAX_PLATFORMS")

  return decide


def test_a_cpu_machine_runs_on_cpu(machine):
  assert machine() == "cpu"


def test_a_tpu_machine_other_plugins_and_the_users_choice_are_left_alone(machine):
  assert machine(tpu=True) is None
  assert machine(plugins=["jax_plugins.xla_cuda12"]) is None
  assert machine(plugins=["jax_plugins.xla_rocm7"]) is None
  assert machine(user_platforms="tpu") == "tpu"
  assert machine(user_platforms="") == ""


def test_a_tpu_environment_counts_as_a_tpu(monkeypatch):
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2,10.0.0.3")
  assert startup.tpu_present()
