"""Taichi kernels of one spring-mass substep and its hand-written gradient (paper Eq. 7-14).

Every kernel takes torch tensors as ``ti.types.ndarray()`` (zero copy; the precision follows the
tensors, so the same kernels serve f32 and f64). Loops are over anchors, the only level the CPU
backend runs in parallel; nothing is scattered with atomics:

* :func:`substep_forward` -- per anchor i, gather the forces of its own K springs (directed:
  anchor i feels only the springs in its own list), semi-implicit Euler, then the ground.
* :func:`_ground_backward` -- per anchor, the adjoint of the ground condition and of Euler's
  update; it leaves the adjoint of each anchor's force in ``g_force`` (the first loop of
  :func:`spring_backward`'s launch).
* :func:`spring_backward` -- per anchor n, the gradient that reaches n through its own springs
  (as their owner) and through the springs of other anchors that end at n: a mutual pair (n holds
  m and m holds n with the same rest length) shares one geometry in n's own loop; the other
  springs ending at n come from the padded reverse adjacency ``rev_ptr/rev_src`` in
  :func:`spring_backward_reverse`, which adds them to the first kernel's output. Each spring's
  Jacobian is recomputed at both ends instead of being scattered with atomics, which on a CPU
  cost more than the arithmetic. The soft vector's gradient is folded into kappa's at once
  (``deta`` = d eta / d kappa) because any store to a global array inside the spring loop makes
  the loop about four times slower on the CPU. Per-rollout constants (1/L0, stiffness * eta of
  the reverse springs) are tabled by the caller so the loops gather as little as possible.

The smooth force law is written with the relative extension l/L0 - 1, so it needs 1/L0 only;
the rest length itself is read for the "paper" law alone. The inner loops are vectorised by LLVM
(8 springs per instruction in f32, several vectors per iteration), which is why the reverse
lists are padded and why no loop body may branch. The parallel loop over anchors runs in tasks
of ``BLOCK`` anchors (through :func:`taichi_sim.runtime.task_spread`: left to itself, Taichi's CPU
backend hands out 512 anchors per task, so the default N = 512 ran on one core), and both cores
stay busy even when the work per anchor varies.

Every kernel is launched through :func:`taichi_sim.launch.fast` (Taichi's own call spent more time
per launch than a substep at 512 anchors x 64 springs).

Taichi's automatic differentiation is not used: a vector accumulated over a non-static inner loop
is differentiated wrongly by it (gradients 1-2 % off, and a crash at K = 256; Taichi issues 8356
and 8027), while hand-written adjoints match f64 finite differences (tests/test_spring_gradients.py).

``prm`` packs the scalars, in the dtype of the state:
``[dt, 1/m, zeta0, p_k, dead_zone, g(3), ground point(3), ground unit normal(3), has_ground, friction,
omega^2, c]``, the last two the penalty ground's acceleration per unit of depth and damping rate
(SpringModel.penalty_constants; read only with ``penalty``).

The ground (Eq. 14) is a compile-time choice, ``penalty``: 0 is the authors' projection (an anchor
past the plane after the step is put back onto it and loses its normal velocity); 1 is a penalty
ground: an anchor below the plane at the start of the substep is pushed out along the normal with
acceleration max(-omega^2 s - c v.n, 0) (s its signed distance, v.n its normal speed), and
its tangential velocity is multiplied by the friction factor as in the projection; the position
then moves with the velocity after both. ``contact`` records 0 (free), 1 (touching, pushed) or 2
(touching, the push clamped to zero: leaving faster than the spring returns).
``law`` is 0 for the "smooth" force law, 1 for the "paper" one, and ``p`` the exponent p_k; both
are compile-time constants (the slot in ``prm`` is read by the PyTorch twin only): a constant
exponent lets LLVM turn pow(x, 0.5) into a square root, about ten times cheaper than powf.
"""
# no "from __future__ import annotations": Taichi reads the annotations as objects
import taichi as ti

from taichi_sim.launch import fast
from taichi_sim.runtime import task_spread

NDA = ti.types.ndarray()
P_DT, P_INV_MASS, P_ZETA0, P_PK, P_DEAD = 0, 1, 2, 3, 4
P_G, P_GP, P_GN, P_HAS_GROUND, P_FRICTION, P_CONTACT_K, P_CONTACT_C = 5, 8, 11, 14, 15, 16, 17
TINY = 1e-12  # springs shorter than this have no direction and exert nothing
REV_PAD = 32  # the reverse adjacency of each anchor is padded to a multiple of this (spring_model.py)
BLOCK = 64  # anchors per parallel task (task_spread; Taichi's CPU backend alone gives 512 or more)


@ti.func
def _vec(a: ti.template(), i):
    return ti.Vector([a[i, 0], a[i, 1], a[i, 2]])


@ti.func
def _prm_vec(prm: ti.template(), k: ti.template()):
    return ti.Vector([prm[k], prm[k + 1], prm[k + 2]])


@ti.func
def _anchor(x: ti.template(), v: ti.template(), prm: ti.template(), a):
    """Position and velocity of anchor a, and the damping and dead-zone constants."""
    return _vec(x, a), _vec(v, a), prm[P_ZETA0], prm[P_DEAD]


@ti.func
def _put(a: ti.template(), i, val):
    a[i, 0] = val[0]
    a[i, 1] = val[1]
    a[i, 2] = val[2]


@ti.func
def _law(ext_rel, rest_l, p: ti.template(), law: ti.template()):
    """phi(l) / L0 and d phi / d l for the force magnitude k*eta*phi (Eq. 9), from the relative
    extension ext_rel = l/L0 - 1 (so the "smooth" law needs no rest length)."""
    a = ti.abs(ext_rel)
    phi_rel = ext_rel
    dphi = ext_rel * 0 + 1
    if ti.static(law == 0):
        h = ti.pow(1 + a, p)  # "smooth": h = (1 + |l/L0 - 1|)^p
        phi_rel = ext_rel * h
        dphi = h + (p * a) * h / (1 + a)
    else:
        h = ti.pow(a * rest_l, p)  # "paper": h = |l - L0|^p
        phi_rel = ext_rel * h
        dphi = (1 + p) * h
    return phi_rel, dphi


@ti.func
def _rest(rest: ti.template(), i, jj, inv_rest, law: ti.template()):
    """The rest length rest[i, jj], loaded only for the "paper" law (the smooth law needs only 1/L0)."""
    out = inv_rest * 0
    if ti.static(law != 0):
        out = rest[i, jj]
    return out


@ti.func
def _rest_1d(rest: ti.template(), e, inv_rest, law: ti.template()):
    """:func:`_rest` for a flat array."""
    out = inv_rest * 0
    if ti.static(law != 0):
        out = rest[e]
    return out


@fast
@ti.kernel
def substep_forward(x: NDA, v: NDA, nbr: NDA, rest: NDA, inv_rest: NDA, stiff: NDA, eta: NDA, prm: NDA,
                    lift: NDA, x_out: NDA, v_out: NDA, vh_out: NDA, contact: NDA, mutual_k: NDA, rev_ptr: NDA,
                    rev_src: NDA, rev_rest: NDA, rev_inv_rest: NDA, rev_k: NDA, law: ti.template(), p: ti.template(),
                    pair: ti.template(), mirror: ti.template(), penalty: ti.template()):
    """One substep (Eq. 9-14). With ``mirror`` every spring acts on both its ends with half its
    force: an anchor also feels the other half of its mutual partners' springs (``mutual_k``, see
    :func:`spring_backward`) and of the springs of the reverse adjacency (``rev_*``, ``rev_k``);
    without it those tables are not read. ``lift`` [N]: how far above the contact plane each anchor
    meets the ground (SpringModel.contact_lift; a constant, so the adjoints do not read it)."""
    n_springs = nbr.shape[1]
    spread = ti.static(task_spread(BLOCK))
    for ix in range(x.shape[0] * spread):
        if ix % spread == 0:
            i = ix // spread
            dt = prm[P_DT]
            zeta0 = prm[P_ZETA0]
            dead = prm[P_DEAD]
            xi = _vec(x, i)
            vi = _vec(v, i)
            ki = stiff[i]
            force = xi * 0
            for jj in range(n_springs):  # branch-free: a branch here makes the loop several times slower
                n = nbr[i, jj]
                il = inv_rest[i, jj]
                d = xi - _vec(x, n)
                l2 = d.dot(d)
                length = ti.sqrt(l2)
                u = d * ti.select(length > TINY, 1 / ti.max(length, TINY), length * 0)
                ext_rel = length * il - 1
                phi_rel, _dphi = _law(ext_rel, _rest(rest, i, jj, il, law), p, law)
                phi_rel = ti.select(ti.abs(ext_rel) >= dead * il, phi_rel, phi_rel * 0)  # dead zone |l-L0| < dead
                w = vi - _vec(v, n)
                kij = ki
                if ti.static(pair):  # the spring's own stiffness sqrt(k_i k_n): the same at both ends
                    kij = ti.sqrt(ki * stiff[n])
                # Eq. 9 with k_ij = k_i / L0 (Eq. 16) and Eq. 10 with zeta_ij = zeta0 / L0 (Eq. 17)
                if ti.static(mirror):  # half of i's spring, and half of n's spring to i when mutual
                    k2 = ti.max(mutual_k[i, jj], 0)
                    two = ti.select(mutual_k[i, jj] >= 0, ki * 0 + 2, ki * 0 + 1)
                    force -= (0.5 * (kij * eta[jj] + k2) * phi_rel + (0.5 * two * zeta0 * il) * w.dot(u)) * u
                else:
                    force -= (kij * eta[jj] * phi_rel + (zeta0 * il) * w.dot(u)) * u
            if ti.static(mirror):  # the other half of the springs of other anchors that end at i
                for e in range(rev_ptr[i], rev_ptr[i + 1]):
                    src = rev_src[e]
                    il = rev_inv_rest[e]
                    u, _inv_len, phi_rel, _dphi_rel, wu, c = _spring_geometry(
                        _vec(x, src) - xi, _vec(v, src) - vi, il, _rest_1d(rev_rest, e, il, law), zeta0, p, dead, law)
                    force += 0.5 * (rev_k[e] * phi_rel + c * wu) * u
            vh = vi + (force * prm[P_INV_MASS] + _prm_vec(prm, P_G)) * dt  # Eq. 12
            xh = xi + vh * dt  # Eq. 13
            touching = 0
            vn = vh
            if ti.static(penalty):  # a damped spring pushes an anchor below the plane out of it
                if prm[P_HAS_GROUND] > 0:
                    nrm = _prm_vec(prm, P_GN)
                    sd = (xi - _prm_vec(prm, P_GP)).dot(nrm) - lift[i]
                    if sd < 0:
                        push = -prm[P_CONTACT_K] * sd - prm[P_CONTACT_C] * vi.dot(nrm)
                        touching = 2
                        if push > 0:
                            touching = 1
                            vh += (push * dt) * nrm
                        vnn = vh.dot(nrm)
                        vn = (vh - vnn * nrm) * prm[P_FRICTION] + vnn * nrm
                        xh = xi + vn * dt
            else:
                if prm[P_HAS_GROUND] > 0:  # Eq. 14
                    nrm = _prm_vec(prm, P_GN)
                    sd = (xh - _prm_vec(prm, P_GP)).dot(nrm) - lift[i]  # lift: SpringModel.contact_lift
                    if sd < 0:
                        touching = 1
                        xh -= sd * nrm
                        vn = (vh - vh.dot(nrm) * nrm) * prm[P_FRICTION]
            _put(x_out, i, xh)
            _put(v_out, i, vn)
            _put(vh_out, i, vh)
            contact[i] = touching


@ti.func
def _ground_backward(gx: ti.template(), gv: ti.template(), vh: ti.template(), contact: ti.template(),
                     prm: ti.template(), gx_direct: ti.template(), gv_direct: ti.template(), g_force: ti.template(),
                     g_friction: ti.template(), penalty: ti.template()):
    for i in range(gx.shape[0]):
        dt = prm[P_DT]
        gxh = _vec(gx, i)
        gvh = _vec(gv, i)
        if ti.static(penalty):
            # x' = x + v' dt, v' = f P vc + (n.vc) n, vc = v_hat + dt max(-K s(x) - C v.n, 0) n;
            # vh holds vc (v_hat where the anchor is free)
            g = gvh + dt * gxh  # the adjoint of v'
            gvx = gxh * 0  # the push's own adjoints of x and v (the input state)
            gvv = gxh * 0
            if contact[i] != 0:
                nrm = _prm_vec(prm, P_GN)
                vt = _vec(vh, i)
                vt -= vt.dot(nrm) * nrm
                g_friction[i] = g_friction[i] + g.dot(vt)
                gn = g.dot(nrm)
                g = (g - gn * nrm) * prm[P_FRICTION] + gn * nrm  # the adjoint of vc
                if contact[i] == 1:
                    ga = dt * g.dot(nrm)  # the adjoint of the push
                    gvx = (-prm[P_CONTACT_K] * ga) * nrm
                    gvv = (-prm[P_CONTACT_C] * ga) * nrm
            _put(gx_direct, i, gxh + gvx)
            _put(gv_direct, i, g + gvv)
            _put(g_force, i, g * (dt * prm[P_INV_MASS]))
        else:
            _projection_backward(gxh, gvh, i, vh, contact, prm, gx_direct, gv_direct, g_force, g_friction)


@ti.func
def _projection_backward(gxh, gvh, i, vh: ti.template(), contact: ti.template(), prm: ti.template(),
                         gx_direct: ti.template(), gv_direct: ti.template(), g_force: ti.template(),
                         g_friction: ti.template()):
    """The adjoint of the projection ground (Eq. 14) and of Euler's update for anchor i."""
    dt = prm[P_DT]
    if contact[i] != 0:
        nrm = _prm_vec(prm, P_GN)
        gxh -= gxh.dot(nrm) * nrm  # x' = P x_hat + const
        vt = _vec(vh, i)
        vt -= vt.dot(nrm) * nrm
        g_friction[i] = g_friction[i] + gvh.dot(vt)  # v' = friction * P v_hat
        gvh = (gvh - gvh.dot(nrm) * nrm) * prm[P_FRICTION]
    gvh += dt * gxh  # x_hat = x + v_hat dt
    _put(gx_direct, i, gxh)
    _put(gv_direct, i, gvh)
    _put(g_force, i, gvh * (dt * prm[P_INV_MASS]))  # v_hat = v + (F/m + g) dt


@ti.func
def _spring_geometry(d, w, inv_rest, rest_l, zeta0, p: ti.template(), dead, law: ti.template()):
    """What the adjoint of a spring needs from its state: u, 1/l, phi/L0, phi'/L0, w.u and
    c = zeta0/L0."""
    length = ti.sqrt(d.dot(d))
    inv_len = ti.select(length > TINY, 1 / ti.max(length, TINY), length * 0)
    u = d * inv_len
    ext_rel = length * inv_rest - 1
    phi_rel, dphi = _law(ext_rel, rest_l, p, law)
    on = ti.abs(ext_rel) >= dead * inv_rest
    phi_rel = ti.select(on, phi_rel, phi_rel * 0)
    dphi_rel = ti.select(on, dphi * inv_rest, dphi * 0)
    return u, inv_len, phi_rel, dphi_rel, w.dot(u), zeta0 * inv_rest


@fast
@ti.kernel
def spring_backward(x: NDA, v: NDA, vh: NDA, contact: NDA, nbr: NDA, rest: NDA, inv_rest: NDA, stiff: NDA,
                    eta: NDA, prm: NDA, mutual_k: NDA, gx_direct: NDA, gv_direct: NDA, g_force: NDA, g_friction: NDA,
                    deta: NDA, gx_io: NDA, gv_io: NDA, g_stiff: NDA, g_kappa: NDA, law: ti.template(),
                    p: ti.template(), pair: ti.template(), mirror: ti.template(), penalty: ti.template()):
    """The ground's adjoint (:func:`_ground_backward`: from (gx_io, gv_io), the gradient with
    respect to the substep's output, to gx_direct, gv_direct, g_force and g_friction), then in a
    second loop the springs' (below), which writes the gradient with respect to the substep's
    input into (gx_io, gv_io): one launch instead of two (a launch costs about 0.1 ms on the CPU
    even through taichi_sim.launch, the ground's loop itself microseconds).

    Adjoint of a spring's force f = -K phi/L0 u - c (w.u) u (K = k eta, c = zeta0/L0) for the
    upstream g = dL/df: with P = I - u u^T,
    (df/dd)^T g = (u.g) (A + B - K phi'/L0) u - A g - B' w,  A = (K phi/L0 + c w.u)/l,
    B = c (w.u)/l, B' = c (u.g)/l; (df/dw)^T g = -c (u.g) u; df/dk_owner = -eta phi/L0 u.

    ``mutual_k`` [N,K]: for the spring (a, jj) to n, stiff[n] * eta[q] when n holds a at slot q with
    the same rest length (a mutual pair, handled here from both ends), else -1. ``rev_k`` [E]:
    stiff * eta of the remaining springs of other anchors that end at a (reverse adjacency), which
    :func:`spring_backward_reverse` adds afterwards (in one kernel with this loop, LLVM compiles both
    loops worse: together they took 30 % longer than apart).

    With ``mirror`` a spring's force acts half on its owner and half, opposite, on its end, so the
    upstream of a spring owned by o and ending at t is (g_o - g_t) / 2 instead of g_o."""
    _ground_backward(gx_io, gv_io, vh, contact, prm, gx_direct, gv_direct, g_force, g_friction, penalty)
    n_springs = nbr.shape[1]
    spread = ti.static(task_spread(BLOCK))
    for ix in range(x.shape[0] * spread):
        if ix % spread == 0:
            a = ix // spread
            xa, va, zeta0, dead = _anchor(x, v, prm, a)
            gx = _vec(gx_direct, a)
            gv = _vec(gv_direct, a)
            ga = _vec(g_force, a)
            ka = stiff[a]
            gk = ka * 0
            gkappa = ka * 0
            # springs owned by a (force on a) and, for a mutual pair, n's spring to a, sharing the
            # geometry (d' = -d, w' = -w, u' = -u, same l, phi, phi'). Terms along the constant g_a
            # are summed as scalars. No store in this loop: a global store makes it several times
            # slower on the CPU.
            coef_ga = ka * 0
            for jj in range(n_springs):
                n = nbr[a, jj]
                il = inv_rest[a, jj]
                w = va - _vec(v, n)
                u, inv_len, phi_rel, dphi_rel, wu, c = _spring_geometry(
                    xa - _vec(x, n), w, il, _rest(rest, a, jj, il, law), zeta0, p, dead, law)
                eta_j = eta[jj]
                kp = ka  # the spring's stiffness before the soft vector
                if ti.static(pair):
                    kp = ti.sqrt(ka * stiff[n])
                k1 = kp * eta_j
                km = mutual_k[a, jj]
                gn = _vec(g_force, n) * ti.select(km >= 0, ka * 0 + 1, ka * 0)  # zero unless mutual
                g1 = ga
                if ti.static(mirror):  # a's spring: (g_a - g_n) / 2; n's spring to a: (g_n - g_a) / 2
                    g1 = 0.5 * (ga - _vec(g_force, n))
                    gn = -g1 * ti.select(km >= 0, ka * 0 + 1, ka * 0)
                k2 = ti.max(km, 0)
                cl = c * inv_len
                b = cl * wu
                ug1 = u.dot(g1)
                ugn = u.dot(gn)  # u'.g_n = -ugn
                a1 = inv_len * k1 * phi_rel + b
                a2 = inv_len * k2 * phi_rel + b
                if ti.static(mirror):
                    gx -= a1 * g1
                else:
                    coef_ga -= a1
                gphi = -phi_rel * ug1  # d L / d k1, the stiffness of a's spring
                if ti.static(pair):  # k1 = sqrt(k_a k_n) eta_j and n's mutual spring k2 = sqrt(k_n k_a) eta_q
                    gk += (gphi * k1 + phi_rel * ugn * k2) * (0.5 / ka)
                    gkappa += gphi * deta[jj] * kp
                else:
                    gk += eta_j * gphi
                    gkappa += gphi * deta[jj]
                gx += (ug1 * (a1 + b - k1 * dphi_rel) - ugn * (a2 + b - k2 * dphi_rel)) * u \
                    + (cl * (ugn - ug1)) * w + a2 * gn
                gv += (c * (ugn - ug1)) * u
            gx += coef_ga * ga
            if ti.static(not pair):
                gkappa *= ka
            g_stiff[a] = g_stiff[a] + gk  # each anchor owns its entry: no atomic (+= would be one)
            g_kappa[a] = g_kappa[a] + gkappa
            _put(gx_io, a, gx)
            _put(gv_io, a, gv)


@fast
@ti.kernel
def spring_backward_reverse(x: NDA, v: NDA, g_force: NDA, prm: NDA, rev_ptr: NDA, rev_src: NDA, rev_rest: NDA,
                            rev_inv_rest: NDA, rev_k: NDA, stiff: NDA, gx_out: NDA, gv_out: NDA, g_stiff: NDA,
                            law: ti.template(), p: ti.template(), pair: ti.template(), mirror: ti.template()):
    """Adds to (gx_out, gv_out) the gradient through the springs of the reverse adjacency (see
    :func:`spring_backward`), and with ``pair`` to g_stiff the gradient of their stiffness
    sqrt(k_src k_a) eta with respect to k_a; with ``mirror`` their upstream is (g_src - g_a) / 2."""
    spread = ti.static(task_spread(BLOCK))
    for ix in range(x.shape[0] * spread):
        if ix % spread == 0:
            a = ix // spread
            xa, va, zeta0, dead = _anchor(x, v, prm, a)
            gx = xa * 0
            gv = xa * 0
            gk = stiff[a] * 0
            for e in range(rev_ptr[a], rev_ptr[a + 1]):  # the other springs of other anchors that end at a
                i = rev_src[e]
                il = rev_inv_rest[e]
                w = _vec(v, i) - va
                u, inv_len, phi_rel, dphi_rel, wu, c = _spring_geometry(
                    _vec(x, i) - xa, w, il, _rest_1d(rev_rest, e, il, law), zeta0, p, dead, law)
                g = _vec(g_force, i)
                if ti.static(mirror):
                    g = 0.5 * (g - _vec(g_force, a))
                k = rev_k[e]
                ug = u.dot(g)
                cl = c * inv_len
                b = cl * wu
                ai = inv_len * k * phi_rel + b
                gx -= (ug * (ai + b - k * dphi_rel)) * u - ai * g - (cl * ug) * w
                gv += (c * ug) * u
                if ti.static(pair):
                    gk -= phi_rel * ug * k
            if ti.static(pair):
                g_stiff[a] = g_stiff[a] + gk * (0.5 / stiff[a])
            _put(gx_out, a, _vec(gx_out, a) + gx)
            _put(gv_out, a, _vec(gv_out, a) + gv)


@fast
@ti.kernel
def stiffness_tables(nbr: NDA, mutual: NDA, rev_flat: NDA, stiff: NDA, eta: NDA, mutual_k: NDA, rev_k: NDA,
                     pair: ti.template()):
    """Per-rollout tables of :func:`spring_backward` and :func:`spring_backward_reverse`:
    mutual_k[a, jj] = k * eta[q] of n's spring to a for a mutual pair (q = mutual[a, jj] >= 0), else
    -1; rev_k[e] = k * eta of the spring at flat index rev_flat[e] of [N,K], 0 for padding (-1).
    k is its owner's stiffness, or with ``pair`` sqrt(k_owner k_end)."""
    n_springs = nbr.shape[1]
    for a, jj in ti.ndrange(nbr.shape[0], n_springs):
        q = mutual[a, jj]
        n = nbr[a, jj]
        k = stiff[n]
        if ti.static(pair):
            k = ti.sqrt(stiff[n] * stiff[a])
        mutual_k[a, jj] = ti.select(q >= 0, k * eta[ti.max(q, 0)], -1.0)
    for e in range(rev_flat.shape[0]):
        f = rev_flat[e]
        g = ti.max(f, 0)
        src = g // n_springs
        k = stiff[src]
        if ti.static(pair):
            k = ti.sqrt(stiff[src] * stiff[nbr[src, g % n_springs]])
        rev_k[e] = ti.select(f >= 0, k * eta[g % n_springs], 0.0)
