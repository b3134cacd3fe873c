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
  being scattered with atomics, which on a CPU cost more than the arithmetic.

Taichi's automatic differentiation is not used: a vector summed over a non-static inner loop is
differentiated wrongly by it (REFERENCE.md section 4).

``prm`` packs the scalars, in the dtype of the state:
``[dt, 1/m, zeta0, p_k, dead_zone, g(3), ground point(3), ground unit normal(3), has_ground, friction]``.
``law`` is 0 for the "smooth" force law, 1 for the "paper" one (a compile-time constant).
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
def _law(ext, rest, p, law: ti.template()):
    """phi(l) = (l-L0) * h and d phi / d l for the force magnitude k*eta*phi (Eq. 9)."""
    a = ti.abs(ext)
    phi = ext
    dphi = ext * 0 + 1
    if ti.static(law == 0):
        e = a / rest  # "smooth": h = (1 + |l/L0 - 1|)^p
        h = ti.pow(1 + e, p)
        phi = ext * h
        dphi = h * (1 + p * e / (1 + e))
    else:
        h = ti.pow(a, p)  # "paper": h = |l - L0|^p
        phi = ext * h
        dphi = (1 + p) * h
    return phi, dphi


@ti.kernel
def substep_forward(x: NDA, v: NDA, nbr: NDA, rest: NDA, stiff: NDA, eta: NDA, prm: NDA,
                    x_out: NDA, v_out: NDA, vh_out: NDA, contact: NDA, law: ti.template()):
    n_springs = nbr.shape[1]
    for i in range(x.shape[0]):
        dt = prm[P_DT]
        zeta0 = prm[P_ZETA0]
        p = prm[P_PK]
        dead = prm[P_DEAD]
        xi = _vec(x, i)
        vi = _vec(v, i)
        ki = stiff[i]
        force = xi * 0
        for jj in range(n_springs):
            n = nbr[i, jj]
            d = xi - _vec(x, n)
            length = d.norm()
            if length > TINY:
                rest_l = rest[i, jj]
                u = d / length
                ext = length - rest_l
                if ti.abs(ext) >= dead:  # Eq. 9, k_ij = k_i / L0 (Eq. 16)
                    phi, _dphi = _law(ext, rest_l, p, law)
                    force -= (ki / rest_l) * eta[jj] * phi * u
                w = vi - _vec(v, n)  # Eq. 10, zeta_ij = zeta0 / L0 (Eq. 17)
                force -= (zeta0 / rest_l) * w.dot(u) * u
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
            g_friction[i] += gvh.dot(vt)  # v' = friction * P v_hat
            gvh = (gvh - gvh.dot(nrm) * nrm) * prm[P_FRICTION]
        gvh += dt * gxh  # x_hat = x + v_hat dt
        _put(gx_direct, i, gxh)
        _put(gv_direct, i, gvh)
        _put(g_force, i, gvh * (dt * prm[P_INV_MASS]))  # v_hat = v + (F/m + g) dt


@ti.func
def _spring_adjoint(d, w, g, rest_l, ki, eta_j, zeta0, p, dead, law: ti.template()):
    """Adjoint of one spring's force f(d = x_i - x_n, w = v_i - v_n) for the upstream g = dL/df.

    Returns (dL/dd, dL/dw, dL/dk_i, dL/deta_j)."""
    gd = d * 0
    gw = d * 0
    gk = d[0] * 0
    geta = d[0] * 0
    length = d.norm()
    if length > TINY:
        u = d / length
        ug = u.dot(g)
        ext = length - rest_l
        if ti.abs(ext) >= dead:
            phi, dphi = _law(ext, rest_l, p, law)
            s = ki * eta_j / rest_l  # f_s = -s phi u; df_s/dd = -s (phi' u u^T + phi/l P)
            gd -= s * (dphi * ug * u + (phi / length) * (g - ug * u))
            gk = -eta_j * phi * ug / rest_l
            geta = -ki * phi * ug / rest_l
        c = zeta0 / rest_l  # f_d = -c (w.u) u
        wu = w.dot(u)
        gw = -c * ug * u
        gd -= (c / length) * ((w - wu * u) * ug + wu * (g - ug * u))
    return gd, gw, gk, geta


@ti.kernel
def spring_backward(x: NDA, v: NDA, nbr: NDA, rest: NDA, stiff: NDA, eta: NDA, prm: NDA,
                    rev_ptr: NDA, rev_src: NDA, rev_slot: NDA,
                    gx_direct: NDA, gv_direct: NDA, g_force: NDA,
                    gx_out: NDA, gv_out: NDA, g_stiff: NDA, g_eta: NDA, law: ti.template()):
    n_springs = nbr.shape[1]
    for a in range(x.shape[0]):
        zeta0 = prm[P_ZETA0]
        p = prm[P_PK]
        dead = prm[P_DEAD]
        xa = _vec(x, a)
        va = _vec(v, a)
        gx = _vec(gx_direct, a)
        gv = _vec(gv_direct, a)
        ga = _vec(g_force, a)
        ka = stiff[a]
        gk = ka * 0
        for jj in range(n_springs):  # springs owned by a: force on a
            n = nbr[a, jj]
            gd, gw, gks, geta = _spring_adjoint(xa - _vec(x, n), va - _vec(v, n), ga, rest[a, jj], ka,
                                                eta[jj], zeta0, p, dead, law)
            gx += gd
            gv += gw
            gk += gks
            g_eta[a, jj] += geta
        for e in range(rev_ptr[a], rev_ptr[a + 1]):  # springs of other anchors that end at a
            i = rev_src[e]
            jj = rev_slot[e]
            gd, gw, _gks, _geta = _spring_adjoint(_vec(x, i) - xa, _vec(v, i) - va, _vec(g_force, i),
                                                  rest[i, jj], stiff[i], eta[jj], zeta0, p, dead, law)
            gx -= gd
            gv -= gw
        g_stiff[a] += gk
        _put(gx_out, a, gx)
        _put(gv_out, a, gv)
