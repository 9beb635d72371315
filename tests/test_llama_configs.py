"""The Llama-family paper configs have their published (HF) parameter counts, counted from
`jax.eval_shape` (nothing allocated), and keep their family's distinguishing options."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from bigflax import models
from experiments import (
  gemma_2b,
  llama2_7b,
  llama3_2_1b,
  llama3_8b,
  llama_tiny,
  mistral_7b,
  qwen2_5_0_5b,
)


@pytest.mark.parametrize(
  "experiment, count",
  [
    (llama2_7b, 6_738_415_616),
    (llama3_8b, 8_030_261_248),
    (mistral_7b, 7_241_732_096),
    (qwen2_5_0_5b, 494_032_768),
    (gemma_2b, 2_506_172_416),
    (llama3_2_1b, 1_235_814_400),
  ],
)
def test_paper_configs_have_the_published_parameter_counts(experiment, count):
  model = models.build(experiment.get_config().model)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  assert sum(x.size for x in jax.tree.leaves(nn.unbox(shapes["params"]))) == count


def test_tiny_llama_is_a_llama():
  model = llama_tiny.get_config().model
  assert (model.position, model.norm, model.activation, model.use_bias, model.tie_embeddings) == (
    "rope",
    "rmsnorm",
    "swiglu",
    False,
    False,
  )
  assert model.num_kv_heads < model.num_heads
