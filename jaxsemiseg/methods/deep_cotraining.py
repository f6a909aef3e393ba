"""Deep Co-Training for segmentation (Peng et al., PR 2020; METHODS.md 3).

N networks with different initialisations and their own optimizer states, stacked as in
``cotraining`` (jizongFox/Deep-Co-Training-for-Semi-Supervised-Image-Segmentation,
``trainer/cotraining.py``). Per step:

1. Own labeled subsets: the labeled batch is split at random into N disjoint shares of
   (nearly) equal size, and net i's CE counts only its share. The reference gives each
   net a fixed disjoint set of labeled images; batches here carry no image ids, so the
   split is drawn afresh every step: the nets see different images at each step, but
   each sees the whole labeled set over a run.
2. Co-training: ``L_cot = mean_pixels [H(mean_i p_i) - mean_i H(p_i)]``, the true
   Jensen-Shannon divergence of the nets' predictions of ``image_u`` (valid pixels).
3. View difference, for every ordered pair (i -> j): with probability
   ``labeled_adversarial_p`` the labeled images and net i's FGSM examples against their
   labels, otherwise the unlabeled images and net i's VAT examples; both attacks run net
   i in eval mode and clip to [0, 1]. Net j must not be fooled:
   ``KL(p_i(x) || p_j(x_adv))`` over the valid pixels, averaged over the pairs.
4. ``L = sum_i CE_i + ramp(t) * (cot_weight * L_cot + adv_weight * L_adv)``, with the
   sigmoid ramp over ``rampup_steps``.

How it runs (``config.member_map``, see ``jaxsemiseg.stacked``): on GPU/TPU the nets'
forward pass is one ``jax.vmap`` over the stacked nets and the pairs are a ``lax.map``
whose ``lax.cond`` runs only the attack each coin chose. On CPU the nets run in an
unrolled loop and so do the pairs, each computing both attacks and selecting the view
the judge sees (one judge pass when both views have one shape): XLA:CPU
runs vmapped convolutions, and backward convolutions inside a loop or a ``cond``, slowly.

Deviations from the reference:
- The reference back-propagates and steps the supervised, co-training and adversarial
  terms as three separate optimizer updates per iteration; this step fuses them into one
  loss and one update per member.
- ``p_i(x)``, the target of the view-difference KL, carries no gradient, as in later
  versions of the reference's ``cotraining.py`` (``real_pred.detach()``; earlier ones
  also train net i through it); the term trains net j to resist net i's examples.
- The labeled images and ``image_u`` of the batch serve all three terms, where the
  reference draws separate batches for the adversarial term.
- The nets see the labeled and unlabeled images in one train-mode call (BatchNorm
  statistics over both, as UniMatch); the attacked images are judged in train mode
  without updating the BatchNorm statistics (as VAT).

Evaluation uses the average of the nets' probabilities (``cotraining``).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxsemiseg import losses, stacked
from jaxsemiseg.augment import adversarial
from jaxsemiseg.methods import common, cotraining, self_training
from jaxsemiseg.state import TrainState

USES_UNLABELED = True

make_predict_fn = cotraining.make_predict_fn


def default_config() -> ml_collections.ConfigDict:
  """Members, term weights and ramp, and the two attacks of the view-difference term."""
  return ml_collections.ConfigDict(dict(
      # The segmentation reference trains 2 nets (its adversarial term supports only 2);
      # every ordered pair is used here, so more work too.
      num_members=2,
      # lambda_cot_max and lambda_adv_max of the reference.
      cot_weight=10.0,
      adv_weight=0.5,
      # The reference ramps over 80 of its 100 epochs; here a quarter of the default
      # 4000-step budget, so the co-training terms are at full weight for most of a short run.
      rampup_steps=1000,
      # Chance that a pair's adversarial term uses labeled images and FGSM (else unlabeled
      # images and VAT); 0.5 in the reference.
      labeled_adversarial_p=0.5,
      # The reference's FGSMGenerator and VATGenerator epsilon on [0, 1] images.
      fgsm_epsilon=0.05,
      vat_epsilon=0.05,
      # The reference's xi is 1e-6, which float32 rounds away on images (see
      # augment.adversarial.vat: use >~ 1e-6 sqrt(#pixel values), 1e-3 up to 512x512).
      vat_xi=1e-3,
  ))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming a ``config.deep_cotraining`` value outside its range."""
  settings = config.deep_cotraining
  if settings.num_members < 2:
    raise ValueError(
        f"config.deep_cotraining.num_members={settings.num_members}; expected >= 2 nets.")
  if config.batch_size < settings.num_members:
    raise ValueError(
        f"config.batch_size={config.batch_size} < config.deep_cotraining.num_members="
        f"{settings.num_members}: every net needs at least one labeled image per batch.")
  for name in ("cot_weight", "adv_weight", "fgsm_epsilon", "vat_epsilon", "rampup_steps"):
    self_training.check_non_negative(f"config.deep_cotraining.{name}", settings[name])
  if settings.vat_xi <= 0:
    raise ValueError(f"config.deep_cotraining.vat_xi={settings.vat_xi}; expected > 0.")
  self_training.check_unit_interval("config.deep_cotraining.labeled_adversarial_p",
                                    settings.labeled_adversarial_p)


def init_state(rng: jax.Array, model, tx: optax.GradientTransformation,
               sample_batch: dict, config: ml_collections.ConfigDict) -> TrainState:
  """``num_members`` differently initialised nets, stacked (``cotraining.init_members``)."""
  return cotraining.init_members(rng, model, tx, sample_batch["image"],
                                 num_members=config.deep_cotraining.num_members)


# Every member's backbone from config.model.pretrained_path; the heads keep their own inits.
with_pretrained_backbone = cotraining.with_pretrained_backbone
# --mode=eval scores each member besides their average.
evaluate_members = cotraining.evaluate_members


def labeled_subsets(key: jax.Array, batch_size: int, num_members: int) -> jax.Array:
  """Bool ``[N, B]``: a random split of the batch into N disjoint shares, one per net.

  Shares differ in size by at most one image; every image belongs to exactly one net.
  """
  order = jax.random.permutation(key, batch_size)
  owner = jnp.zeros(batch_size, jnp.int32).at[order].set(
      jnp.arange(batch_size, dtype=jnp.int32) % num_members)
  return owner[None, :] == jnp.arange(num_members)[:, None]


def make_attacks(model, config: ml_collections.ConfigDict) -> tuple[Callable, Callable]:
  """The view-difference attacks of one net, in eval mode, on ``(params, batch_stats)``.

  Returns:
    ``(fgsm, vat)``: ``fgsm(variables, images, labels, key) -> images_adv`` (FGSM against
    the labeled CE) and ``vat(variables, images, key, valid) -> images_adv`` (VAT on the
    ``valid`` pixels, the crop without its padding), both clipped to [0, 1] and carrying
    no gradient; ``variables`` is a ``(params, batch_stats)`` pair of one net.
  """
  settings = config.deep_cotraining

  def logits_fn(variables: tuple[Any, Any], images: jax.Array) -> jax.Array:
    outputs, _ = common.forward(model, *variables, images, train=False)
    return outputs["logits"]

  def labeled_loss(variables: tuple[Any, Any], images: jax.Array,
                   labels: jax.Array) -> jax.Array:
    return losses.cross_entropy(logits_fn(variables, images), labels)[0]

  fgsm = adversarial.fgsm(labeled_loss, epsilon=settings.fgsm_epsilon)
  perturb = adversarial.vat(logits_fn, xi=settings.vat_xi, epsilon=settings.vat_epsilon)

  def vat(variables: tuple[Any, Any], images: jax.Array, key: jax.Array,
          valid: jax.Array) -> jax.Array:
    return jnp.clip(images + perturb(variables, images, key, mask=valid), 0.0, 1.0)

  return fgsm, vat


def view_difference(model, config: ml_collections.ConfigDict, params: Any, batch_stats: Any,
                    batch: dict, clean_probs: jax.Array, key: jax.Array, *,
                    attacker: int | jax.Array,
                    judge: int | jax.Array, use_labeled: jax.Array | bool,
                    branchless: bool = False) -> jax.Array:
  """``KL(p_attacker(x) || p_judge(x_adv))``, x_adv the attacker's adversarial example.

  Args:
    model: the segmentation model.
    config: the run config (``config.deep_cotraining`` holds the attack settings).
    params: stacked parameters of the nets; gradients flow into the judge's slice.
    batch_stats: their stacked BatchNorm statistics.
    batch: the step's batch (``image``, ``label``, ``image_u``, ``valid_u``).
    clean_probs: ``[N, B_l + B_u, H, W, C]`` the nets' probabilities of the labeled then
      unlabeled images; the attacker's are the KL target (no gradient).
    key: PRNG key of the VAT direction and the judge's dropout.
    attacker: index i of the net whose adversarial examples are built (int or traced).
    judge: index j of the net that must not be fooled (int or traced).
    use_labeled: FGSM on the labeled images (True) or VAT on ``image_u`` (False); a
      traced bool runs only the chosen branch in a ``lax.cond``, or with ``branchless``
      both attacks and one judge pass on the chosen view (two, then the chosen loss,
      when the labeled and unlabeled views differ in shape or dtype).
    branchless: no ``lax.cond`` (for XLA:CPU, see ``make_train_step``).

  Returns:
    The scalar KL over valid pixels.
  """
  fgsm, vat = make_attacks(model, config)
  attacker_variables = jax.lax.stop_gradient(
      (cotraining.member(params, attacker), cotraining.member(batch_stats, attacker)))
  judge_params = cotraining.member(params, judge)
  judge_stats = cotraining.member(batch_stats, judge)
  num_labeled = batch["image"].shape[0]
  vat_key, dropout_key = jax.random.split(key)

  def judged(images_adv: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    outputs, _ = common.forward(model, judge_params, judge_stats, images_adv, train=True,
                                rng=dropout_key)
    return losses.kl_divergence(target, outputs["logits"], mask=mask)[0]

  def labeled_view() -> tuple[jax.Array, jax.Array, jax.Array]:
    return (fgsm(attacker_variables, batch["image"], batch["label"], None),
            clean_probs[attacker, :num_labeled], batch["label"] != losses.IGNORE_INDEX)

  def unlabeled_view() -> tuple[jax.Array, jax.Array, jax.Array]:
    return (vat(attacker_variables, batch["image_u"], vat_key, batch["valid_u"]),
            clean_probs[attacker, num_labeled:], batch["valid_u"])

  if isinstance(use_labeled, bool):
    return judged(*(labeled_view() if use_labeled else unlabeled_view()))
  if not branchless:
    return jax.lax.cond(use_labeled, lambda: judged(*labeled_view()),
                        lambda: judged(*unlabeled_view()))
  labeled, unlabeled = labeled_view(), unlabeled_view()
  if [(x.shape, x.dtype) for x in labeled] == [(x.shape, x.dtype) for x in unlabeled]:
    # Both attacks run, but the judge's train-mode pass (forward and backward) only once,
    # on the view the coin chose.
    return judged(*(jnp.where(use_labeled, a, b) for a, b in zip(labeled, unlabeled)))
  return jnp.where(use_labeled, judged(*labeled), judged(*unlabeled))


def make_train_step(model, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
  """Returns the pure, un-jitted ``step(state, batch, rng) -> (state, metrics)``.

  ``batch`` needs ``image``, ``label``, ``image_u`` and ``valid_u``. Metrics: ``loss``,
  ``loss_x`` and the labeled terms such as ``loss_ce`` (summed over the nets, each on its
  own share), ``loss_cot`` (JSD), ``loss_adv`` (mean view-difference KL over the ordered
  pairs), ``cot_weight`` and ``adv_weight`` (the ramped weights of this step) and
  ``grad_norm``.
  """
  settings = config.deep_cotraining
  num_members = settings.num_members
  pairs = list(itertools.permutations(range(num_members), 2))
  attackers = np.array([attacker for attacker, _ in pairs], np.int32)
  judges = np.array([judge for _, judge in pairs], np.int32)

  def step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
    subset_rng, dropout_rng, coin_rng, adversarial_rng = jax.random.split(rng, 4)
    num_labeled = batch["image"].shape[0]
    subsets = labeled_subsets(subset_rng, num_labeled, num_members)
    member_labels = jnp.where(subsets[:, :, None, None], batch["label"][None],
                              losses.IGNORE_INDEX)
    use_labeled = jax.random.bernoulli(coin_rng, settings.labeled_adversarial_p, (len(pairs),))
    ramp = losses.sigmoid_rampup(state.step, length=settings.rampup_steps)
    cot_weight, adv_weight = settings.cot_weight * ramp, settings.adv_weight * ramp

    def loss_fn(params: Any):
      outputs, batch_stats = cotraining.forward_members(
          model, params, state.batch_stats, jnp.concatenate([batch["image"], batch["image_u"]]),
          train=True, rng=dropout_rng, member_map=config.member_map)
      logits = outputs["logits"]
      loss_x, terms = jax.vmap(lambda z, y: common.supervised_loss(z, y, config.loss))(
          logits[:, :num_labeled], member_labels)
      probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
      loss_cot, _ = losses.jensen_shannon(probs[:, num_labeled:], mask=batch["valid_u"])

      def pair_term(attacker: int | jax.Array, judge: int | jax.Array, key: jax.Array,
                    labeled: jax.Array, branchless: bool = False) -> jax.Array:
        return view_difference(model, config, params, state.batch_stats, batch, probs, key,
                               attacker=attacker, judge=judge, use_labeled=labeled,
                               branchless=branchless)

      keys = jax.random.split(adversarial_rng, len(pairs))
      if stacked.resolve_member_map(config.member_map) == "loop":
        # XLA:CPU: a lax.cond branch, like a loop body, is a computation of its own whose
        # backward-pass convolutions miss the fast kernels (see jaxsemiseg.stacked), so
        # here the pairs are unrolled and each runs both attacks, its coin picking the
        # view the judge sees: twice the attack work, still ~2x faster than the loop of
        # conds on CPU.
        loss_adv = jnp.mean(jnp.stack([
            pair_term(attacker, judge, key, labeled, branchless=True)
            for (attacker, judge), key, labeled in zip(pairs, keys, use_labeled)]))
      else:
        # A loop, not a vmap: each pair runs only the attack its coin chose, and the
        # compiled step holds one copy of the two branches whatever the number of pairs.
        loss_adv = jax.lax.map(lambda pair: pair_term(*pair),
                               (attackers, judges, keys, use_labeled)).mean()
      metrics = {**{name: value.sum() for name, value in terms.items()},
                 "loss_x": loss_x.sum(), "loss_cot": loss_cot, "loss_adv": loss_adv,
                 "cot_weight": cot_weight, "adv_weight": adv_weight}
      total = loss_x.sum() + cot_weight * loss_cot + adv_weight * loss_adv
      return total, (batch_stats, metrics)

    return cotraining.apply_member_gradients(state, tx, loss_fn)

  return step
