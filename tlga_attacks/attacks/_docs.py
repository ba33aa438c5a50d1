"""Docstring blocks shared by the attacks of the family."""

PAPER = (
    "'Exposing and Defending the Achilles' Heel of Video Mixture-of-Experts', "
    "S. Wang, Q. Liu, Y. Lyu, N. Li, Z. He, C. Shan, ICLR 2026 "
    "[https://arxiv.org/abs/2602.01369]"
)

COMMON_ARGUMENTS = """
        model (nn.Module): the video MoE to attack. Its forward may return logits, a tuple
            ``(logits, aux_loss)`` or a dict with ``"logits"``.
        eps (float): maximum L-infinity perturbation, in [0, 1] pixel units. (Default: 8/255)
        alpha (float): step size relative to eps; a step moves by at most ``alpha * eps``.
            (Default: 0.5)
        steps (int): number of steps. With 0 the attack returns its random start, or the
            input itself with ``random_start=False``. (Default: 10)
        random_start (bool): start at a uniform random point of the eps-ball. (Default: True)
        restarts (int): random restarts; later restarts re-run the clips not yet fooled.
            (Default: 1)
        early_stop (bool): return per clip the first iterate that fools the model and stop
            once every clip is fooled. False runs every step and returns the last iterate,
            the training examples of adversarial training. (Default: True)
        time_dim (int): 2 for (N, C, T, H, W) models, 1 for (N, T, C, H, W). (Default: 2)
        routers (list of str, optional): module paths of the routers. (Default: None, found
            by ``MoEInspector``)
        experts (list, optional): per router, the path of its experts container.
            (Default: None)
        top_k (int, optional): experts per routing unit for layers that do not expose it.
            (Default: None)
        output_to_logits (callable, optional): maps the model's output to logits.
            (Default: None, see ``tlga_attacks.outputs.logits_from_output``)"""

TEMPORAL_ARGUMENTS = """
        beta (float): decay of the per-frame gradient-norm accumulator of the temporal
            adaptive step. (Default: 0.9)"""

LAM_ARGUMENT = """
        lam (float): weight of the Lipschitz ratio terms. (Default: 1e-3, chosen with
            benchmarks/lam_sweep.py)"""

MODEL_LAM_ARGUMENT = """
        lam (float): weight of the Lipschitz ratio terms. (Default: 0.0: in
            benchmarks/lam_sweep.py every lam > 0 weakened the model-level attacks, because
            Lip(F) keeps its gradient where the cross-entropy saturates)"""

SHAPES = """
    Shape:
        - videos: (N, C, T, H, W) (or (N, T, C, H, W) with ``time_dim=1``), float in [0, 1].
        - labels: (N,) int64 class indices.
        - output: same shape, dtype, device and memory layout as the videos, within the
          eps-ball of the input and within [0, 1]."""


def attack_doc(summary: str, objective: str, step: str, extra_arguments: str, example: str) -> str:
    """Assemble a torchattacks-style docstring for one attack."""
    return f"""{summary}

    Paper: {PAPER}

    Distance Measure: Linf

    Objective (maximized): {objective}
    Step: {step}

    Arguments:{COMMON_ARGUMENTS}{extra_arguments}
{SHAPES}

    Examples::
{example}
    """
