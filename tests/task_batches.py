"""Random meta-batches for the gradient-based family's tests (not a library module)."""
import tinymeta as tm


def random_batch(net, rng, T, K=5, Q=6):
    """``T`` tasks of ``K`` support and ``Q`` query rows for ``net``: standard normal inputs (and
    targets for ``"mse"``), uniform labels for ``"xent"``, in the net's dtype."""
    d_in, d_out = net.sizes[0], net.sizes[-1]
    Xs = rng.standard_normal((T, K, d_in)).astype(net.dtype)
    Xq = rng.standard_normal((T, Q, d_in)).astype(net.dtype)
    if net.loss_name == "xent":
        return tm.TaskBatch(Xs, rng.integers(0, d_out, (T, K)), Xq, rng.integers(0, d_out, (T, Q)))
    return tm.TaskBatch(Xs, rng.standard_normal((T, K, d_out)).astype(net.dtype), Xq,
                        rng.standard_normal((T, Q, d_out)).astype(net.dtype))
