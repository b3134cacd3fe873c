"""Taichi kernels of one spring-mass substep and its hand-written gradient (paper Eq. 7-14).

Every kernel takes torch tensors as ``ti.types.ndarray()`` (zero copy; the precision follows the
tensors, so the same kernels serve f32 and f64). Loops are over anchors, the only level the CPU
backend runs in parallel; nothing is scattered with atomics:

* :func:`substep_forward` -- per anchor i, gather the forces of its own K springs (directed:
  anchor i feels only the springs in its own list), semi-implicit Euler, then the ground.
* :func:`ground_backward` -- per anchor, the adjoint of the ground condition and of Euler's
  update; it leaves the adjoint of each anchor's force in ``g_force``.
* :func:`spring_backward` -- per anchor n, the gradient that reaches n through its own springs
  (as their owner) and through the springs of other anchors that end at n (read from the reverse
  adjacency ``rev_ptr/rev_src/rev_slot``). Each spring's Jacobian is recomputed twice instead of
  being scattered with atomics, which on a CPU cost more than the arithmetic. The soft vector's
  gradient is folded into kappa's at once (``deta`` = d eta / d kappa) because any store to a
  global array inside the spring loop makes the loop about four times slower on the CPU.

Taichi's automatic differentiation is not used: a vector summed over a non-static inner loop is
differentiated wrongly by it (REFERENCE.md section 4).

``prm`` packs the scalars, in the dtype of the state:
``[dt, 1/m, zeta0, p_k, dead_zone, g(3), ground point(3), ground unit normal(3), has_ground, friction]``.
``law`` is 0 for the "smooth" force law, 1 for the "paper" one, and ``p`` the exponent p_k; both
are compile-time constants (the slot in ``prm`` is read by the PyTorch twin only): a constant
exponent lets LLVM turn pow(x, 0.5) into a square root, about ten times cheaper than powf.
"""
# no "from __future__ import annotations": Taichi reads the annotations as objects
import taichi as ti

NDA = ti.types.ndarray()
P_DT, P_INV_MASS, P_ZETA0, P_PK, P_DEAD = 0, 1, 2, 3, 4
P_G, P_GP, P_GN, P_HAS_GROUND, P_FRICTION = 5, 8, 11, 14, 15
N_PRM = 16
TINY = 1e-12  # springs shorter than this have no direction and exert nothing


@ti.func
def _vec(a: ti.template(), i):
    return ti.Vector([a[i, 0], a[i, 1], a[i, 2]])


@ti.func
def _prm_vec(prm: ti.template(), k: ti.template()):
    return ti.Vector([prm[k], prm[k + 1], prm[k + 2]])


@ti.func
def _put(a: ti.template(), i, val):
    a[i, 0] = val[0]
    a[i, 1] = val[1]
    a[i, 2] = val[2]


@ti.func
def _law(ext, inv_rest, p: ti.template(), law: ti.template()):
    """phi(l) = (l-L0) * h and d phi / d l for the force magnitude k*eta*phi (Eq. 9)."""
    a = ti.abs(ext)
    phi = ext
    dphi = ext * 0 + 1
    if ti.static(law == 0):
        e = a * inv_rest  # "smooth": h = (1 + |l/L0 - 1|)^p
        h = ti.pow(1 + e, p)
        phi = ext * h
        dphi = h + (p * e) * h / (1 + e)
    else:
        h = ti.pow(a, p)  # "paper": h = |l - L0|^p
        phi = ext * h
        dphi = (1 + p) * h
    return phi, dphi


@ti.kernel
def substep_forward(x: NDA, v: NDA, nbr: NDA, rest: NDA, inv_rest: NDA, stiff: NDA, eta: NDA, prm: NDA,
                    x_out: NDA, v_out: NDA, vh_out: NDA, contact: NDA, law: ti.template(), p: ti.template()):
    n_springs = nbr.shape[1]
    for i in range(x.shape[0]):
        dt = prm[P_DT]
        zeta0 = prm[P_ZETA0]
        dead = prm[P_DEAD]
        xi = _vec(x, i)
        vi = _vec(v, i)
        ki = stiff[i]
        force = xi * 0
        for jj in range(n_springs):  # branch-free: a branch here makes the loop several times slower
            n = nbr[i, jj]
            d = xi - _vec(x, n)
            length = d.norm()
            u = d * ti.select(length > TINY, 1 / ti.max(length, TINY), length * 0)
            ext = length - rest[i, jj]
            il = inv_rest[i, jj]
            phi, _dphi = _law(ext, il, p, law)
            phi = ti.select(ti.abs(ext) >= dead, phi, phi * 0)  # dead zone: no spring force
            w = vi - _vec(v, n)
            # Eq. 9 with k_ij = k_i / L0 (Eq. 16) and Eq. 10 with zeta_ij = zeta0 / L0 (Eq. 17)
            force -= ((ki * eta[jj] * phi + zeta0 * w.dot(u)) * il) * u
        vh = vi + (force * prm[P_INV_MASS] + _prm_vec(prm, P_G)) * dt  # Eq. 12
        xh = xi + vh * dt  # Eq. 13
        touching = 0
        vn = vh
        if prm[P_HAS_GROUND] > 0:  # Eq. 14
            nrm = _prm_vec(prm, P_GN)
            sd = (xh - _prm_vec(prm, P_GP)).dot(nrm)
            if sd < 0:
                touching = 1
                xh -= sd * nrm
                vn = (vh - vh.dot(nrm) * nrm) * prm[P_FRICTION]
        _put(x_out, i, xh)
        _put(v_out, i, vn)
        _put(vh_out, i, vh)
        contact[i] = touching


@ti.kernel
def ground_backward(gx: NDA, gv: NDA, vh: NDA, contact: NDA, prm: NDA,
                    gx_direct: NDA, gv_direct: NDA, g_force: NDA, g_friction: NDA):
    for i in range(gx.shape[0]):
        dt = prm[P_DT]
        gxh = _vec(gx, i)
        gvh = _vec(gv, i)
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
def _spring_geometry(d, w, rest_l, inv_rest, zeta0, p: ti.template(), dead, law: ti.template()):
    """What the adjoint of a spring needs from its state: u, 1/l, phi, phi', w.u and c = zeta0/L0."""
    length = d.norm()
    inv_len = ti.select(length > TINY, 1 / ti.max(length, TINY), length * 0)
    u = d * inv_len
    ext = length - rest_l
    phi, dphi = _law(ext, inv_rest, p, law)
    on = ti.abs(ext) >= dead
    phi = ti.select(on, phi, phi * 0)
    dphi = ti.select(on, dphi, dphi * 0)
    return u, inv_len, phi, dphi, w.dot(u), zeta0 * inv_rest


@ti.func
def _adjoint_from_geometry(u, w, g, inv_len, phi, dphi, wu, c, s):
    """(dL/dd, dL/dw) of f = -s phi(l) u - c (w.u) u for the upstream g = dL/df, where
    df/dd = -s (phi' u u^T + phi/l P) - c/l (u w^T P + (w.u) P), P = I - u u^T (written out as
    A u + B g + C w)."""
    ug = u.dot(g)
    coef_u = ug * (inv_len * (s * phi + 2 * c * wu) - s * dphi)
    coef_g = -inv_len * (s * phi + c * wu)
    coef_w = -c * ug * inv_len
    return coef_u * u + coef_g * g + coef_w * w, (-c * ug) * u, ug


@ti.kernel
def spring_backward(x: NDA, v: NDA, nbr: NDA, rest: NDA, inv_rest: NDA, stiff: NDA, eta: NDA, prm: NDA,
                    mutual: NDA, rev_ptr: NDA, rev_src: NDA, rev_slot: NDA, rev_rest: NDA, rev_inv_rest: NDA,
                    gx_direct: NDA, gv_direct: NDA, g_force: NDA,
                    deta: NDA, gx_out: NDA, gv_out: NDA, g_stiff: NDA, g_kappa: NDA, law: ti.template(),
                    p: ti.template()):
    n_springs = nbr.shape[1]
    for a in range(x.shape[0]):
        zeta0 = prm[P_ZETA0]
        dead = prm[P_DEAD]
        xa = _vec(x, a)
        va = _vec(v, a)
        gx = _vec(gx_direct, a)
        gv = _vec(gv_direct, a)
        ga = _vec(g_force, a)
        ka = stiff[a]
        gk = ka * 0
        gkappa = ka * 0
        # springs owned by a (force on a) and, when n also holds a in its list at slot q with the
        # same rest length (a mutual pair), n's spring to a, sharing the geometry. Terms along the
        # constant g_a are summed as scalars. No store in this loop: a global store makes it several
        # times slower on the CPU.
        coef_ga = ka * 0
        for jj in range(n_springs):
            n = nbr[a, jj]
            w = va - _vec(v, n)
            il = inv_rest[a, jj]
            u, inv_len, phi, dphi, wu, c = _spring_geometry(xa - _vec(x, n), w, rest[a, jj], il,
                                                            zeta0, p, dead, law)
            eta_j = eta[jj]
            s1 = ka * eta_j * il
            ug1 = u.dot(ga)
            # own spring a -> n: (df/dd)^T g_a = cu1 u + cg1 g_a + cw1 w (see _adjoint_from_geometry)
            cu1 = ug1 * (inv_len * (s1 * phi + 2 * c * wu) - s1 * dphi)
            coef_ga -= inv_len * (s1 * phi + c * wu)
            cw1 = -c * ug1 * inv_len
            gphi = -phi * ug1 * il  # d f / d(k_a), per unit eta_j
            gk += eta_j * gphi
            gkappa += gphi * deta[jj]
            # n's spring n -> a (d' = -d, w' = -w, u' = -u, same l, phi, phi'); it enters with a minus
            q = mutual[a, jj]
            on = ti.select(q >= 0, ka * 0 + 1, ka * 0)
            gn = _vec(g_force, n)
            s2 = on * stiff[n] * eta[ti.max(q, 0)] * il
            ugn = u.dot(gn)  # u'.g_n = -ugn
            cu2 = -ugn * (inv_len * (s2 * phi + 2 * c * wu) - s2 * dphi) * on
            cg2 = -inv_len * (s2 * phi + c * wu) * on
            cw2 = c * ugn * inv_len * on
            gx += (cu1 + cu2) * u + (cw1 + cw2) * w - cg2 * gn
            gv += (c * (on * ugn - ug1)) * u
        gx += coef_ga * ga
        gkappa *= ka
        for e in range(rev_ptr[a], rev_ptr[a + 1]):  # the other springs of other anchors that end at a
            i = rev_src[e]
            w = _vec(v, i) - va
            u, inv_len, phi, dphi, wu, c = _spring_geometry(_vec(x, i) - xa, w, rev_rest[e], rev_inv_rest[e],
                                                            zeta0, p, dead, law)
            gd, gw, _ug = _adjoint_from_geometry(u, w, _vec(g_force, i), inv_len, phi, dphi, wu, c,
                                                 stiff[i] * eta[rev_slot[e]] * rev_inv_rest[e])
            gx -= gd
            gv -= gw
        g_stiff[a] = g_stiff[a] + gk  # each anchor owns its entry: no atomic (+= would be one)
        g_kappa[a] = g_kappa[a] + gkappa
        _put(gx_out, a, gx)
        _put(gv_out, a, gv)
