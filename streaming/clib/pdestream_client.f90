! pdestream Fortran client: module pdestream_client over the C client (pdestream_client.c).
!
! Compile and link (after `pip install pdestream`):
!     gfortran my_solver.f90 $(pdestream client-config --fflags --libs)
!
!     use pdestream_client
!     type(pds_client) :: c
!     real(real32) :: t(64, 64)
!     c = pds_connect("", 7_int64, [300d0, 100d0], ["T"], [64_int64, 64_int64])
!     if (.not. pds_connected(c)) stop pds_last_error()
!     do k = 0, n_frames - 1
!        call advance(t)
!        rc = pds_send(c, "T", int(k, int64), t)     ! real32 or real64 arrays of rank 1 to 3
!     end do
!     rc = pds_close(c)
!
! rc = pds_end(c) ends a simulation without waiting for the job; start the next one, then pds_close(c).
!
! Axis order: a Fortran array is column-major. Give `grid` (and `offset`, `local_shape` for a slab) in
! Fortran order, as the array is declared, e.g. [nx, ny] for t(nx, ny); the module reverses them for
! the wire, so the job receives the array as C order (ny, nx): the job's t[j, i] is Fortran's t(i, j).
! Offsets are 0-based. Empty address "": $PDESTREAM_ADDRESS; the token comes from TOKEN@HOST:PORT or
! $PDESTREAM_TOKEN. Return codes are those of pdestream_client.h (PDS_OK = 0, < 0 errors).
module pdestream_client
  use, intrinsic :: iso_c_binding
  use, intrinsic :: iso_fortran_env, only: real32, real64, int64
  implicit none
  private

  integer, parameter, public :: PDS_OK = 0, PDS_DROPPED = 1, PDS_E_ARG = -1, PDS_E_CONNECT = -2, &
       PDS_E_REFUSED = -3, PDS_E_STOPPED = -4, PDS_E_REJECTED = -5, PDS_E_TIMEOUT = -6, PDS_E_PROTOCOL = -7, &
       PDS_E_NOMEM = -8

  type, public :: pds_client
     type(c_ptr) :: ptr = c_null_ptr
  end type pds_client

  public :: pds_connect, pds_send, pds_end, pds_close, pds_abort, pds_last_error, pds_last_code, pds_connected

  interface pds_send
     module procedure send_r32_1, send_r32_2, send_r32_3, send_r64_1, send_r64_2, send_r64_3
  end interface pds_send

  interface
     function c_connect(address, sim_id, n_params, params, n_fields, fields, ndim, grid) &
          bind(C, name="pds_connect") result(p)
       import :: c_ptr, c_char, c_long, c_int, c_double
       character(kind=c_char), intent(in) :: address(*)
       integer(c_long), value :: sim_id
       integer(c_int), value :: n_params, n_fields, ndim
       real(c_double), intent(in) :: params(*)
       type(c_ptr), intent(in) :: fields(*)
       integer(c_long), intent(in) :: grid(*)
       type(c_ptr) :: p
     end function c_connect

     function c_connect_slab(address, sim_id, n_params, params, n_fields, fields, ndim, grid, offset, &
          local_shape, n_ranks) bind(C, name="pds_connect_slab") result(p)
       import :: c_ptr, c_char, c_long, c_int, c_double
       character(kind=c_char), intent(in) :: address(*)
       integer(c_long), value :: sim_id
       integer(c_int), value :: n_params, n_fields, ndim, n_ranks
       real(c_double), intent(in) :: params(*)
       type(c_ptr), intent(in) :: fields(*)
       integer(c_long), intent(in) :: grid(*), offset(*), local_shape(*)
       type(c_ptr) :: p
     end function c_connect_slab

     function c_send(c, field, frame, data) bind(C, name="pds_send") result(rc)
       import :: c_ptr, c_char, c_long, c_int
       type(c_ptr), value :: c, data
       character(kind=c_char), intent(in) :: field(*)
       integer(c_long), value :: frame
       integer(c_int) :: rc
     end function c_send

     function c_send_f64(c, field, frame, data) bind(C, name="pds_send_f64") result(rc)
       import :: c_ptr, c_char, c_long, c_int
       type(c_ptr), value :: c, data
       character(kind=c_char), intent(in) :: field(*)
       integer(c_long), value :: frame
       integer(c_int) :: rc
     end function c_send_f64

     function c_close(c) bind(C, name="pds_close") result(rc)
       import :: c_ptr, c_int
       type(c_ptr), value :: c
       integer(c_int) :: rc
     end function c_close

     function c_end(c) bind(C, name="pds_end") result(rc)
       import :: c_ptr, c_int
       type(c_ptr), value :: c
       integer(c_int) :: rc
     end function c_end

     subroutine c_abort(c) bind(C, name="pds_abort")
       import :: c_ptr
       type(c_ptr), value :: c
     end subroutine c_abort

     function c_last_error() bind(C, name="pds_last_error") result(p)
       import :: c_ptr
       type(c_ptr) :: p
     end function c_last_error

     function c_last_code() bind(C, name="pds_last_code") result(rc)
       import :: c_int
       integer(c_int) :: rc
     end function c_last_code

     function c_fail(code, msg) bind(C, name="pds_fail_") result(rc)
       import :: c_int, c_char
       integer(c_int), value :: code
       character(kind=c_char), intent(in) :: msg(*)
       integer(c_int) :: rc
     end function c_fail

     function c_strlen(s) bind(C, name="strlen") result(n)
       import :: c_ptr, c_size_t
       type(c_ptr), value :: s
       integer(c_size_t) :: n
     end function c_strlen
  end interface

contains

  pure function cstr(s) result(out)
    character(len=*), intent(in) :: s
    character(kind=c_char) :: out(len_trim(s) + 1)
    integer :: i
    do i = 1, len_trim(s)
       out(i) = s(i:i)
    end do
    out(len_trim(s) + 1) = c_null_char
  end function cstr

  !> Connect simulation `sim_id`: params (P), field names (the job's channel order, trailing blanks
  !> ignored), grid in Fortran order. With `offset` and `local_shape` (0-based, Fortran order) and
  !> `n_ranks`: one rank's slab. Check the result with pds_connected; pds_last_error says why not.
  function pds_connect(address, sim_id, params, fields, grid, offset, local_shape, n_ranks) result(client)
    character(len=*), intent(in) :: address
    integer(int64), intent(in) :: sim_id
    real(real64), intent(in) :: params(:)
    character(len=*), intent(in) :: fields(:)
    integer(int64), intent(in) :: grid(:)
    integer(int64), intent(in), optional :: offset(:), local_shape(:)
    integer, intent(in), optional :: n_ranks
    type(pds_client) :: client
    character(kind=c_char), allocatable, target :: names(:)
    type(c_ptr) :: ptrs(max(size(fields), 1))
    integer(c_long) :: g(max(size(grid), 1)), o(max(size(grid), 1)), l(max(size(grid), 1))
    real(c_double) :: p(max(size(params), 1))
    integer :: i, j, k, nd, ranks, rc

    allocate(names(size(fields) * (len(fields) + 1) + 1))
    k = 1
    do i = 1, size(fields)
       ptrs(i) = c_loc(names(k))
       do j = 1, len_trim(fields(i))
          names(k) = fields(i)(j:j)
          k = k + 1
       end do
       names(k) = c_null_char
       k = k + 1
    end do
    nd = size(grid)
    g(1:nd) = grid(nd:1:-1)  ! Fortran order -> C order
    p(1:size(params)) = params
    if (present(offset) .or. present(local_shape)) then
       if (.not. (present(offset) .and. present(local_shape))) then
          rc = c_fail(PDS_E_ARG, cstr("pds_connect: a slab needs both offset and local_shape (Fortran order, " // &
               "0-based offset); pass neither for a whole-grid client"))
          return
       end if
       o(1:nd) = offset(nd:1:-1)
       l(1:nd) = local_shape(nd:1:-1)
       ranks = 1
       if (present(n_ranks)) ranks = n_ranks
       client%ptr = c_connect_slab(cstr(address), int(sim_id, c_long), int(size(params), c_int), p, &
            int(size(fields), c_int), ptrs, int(nd, c_int), g, o, l, int(ranks, c_int))
    else
       client%ptr = c_connect(cstr(address), int(sim_id, c_long), int(size(params), c_int), p, &
            int(size(fields), c_int), ptrs, int(nd, c_int), g)
    end if
  end function pds_connect

  logical function pds_connected(client)
    type(pds_client), intent(in) :: client
    pds_connected = c_associated(client%ptr)
  end function pds_connected

  integer function send_r32_1(client, field, frame, data) result(rc)
    type(pds_client), intent(in) :: client
    character(len=*), intent(in) :: field
    integer(int64), intent(in) :: frame
    real(real32), intent(in), target, contiguous :: data(:)
    rc = c_send(client%ptr, cstr(field), int(frame, c_long), c_loc(data))
  end function send_r32_1

  integer function send_r32_2(client, field, frame, data) result(rc)
    type(pds_client), intent(in) :: client
    character(len=*), intent(in) :: field
    integer(int64), intent(in) :: frame
    real(real32), intent(in), target, contiguous :: data(:, :)
    rc = c_send(client%ptr, cstr(field), int(frame, c_long), c_loc(data))
  end function send_r32_2

  integer function send_r32_3(client, field, frame, data) result(rc)
    type(pds_client), intent(in) :: client
    character(len=*), intent(in) :: field
    integer(int64), intent(in) :: frame
    real(real32), intent(in), target, contiguous :: data(:, :, :)
    rc = c_send(client%ptr, cstr(field), int(frame, c_long), c_loc(data))
  end function send_r32_3

  integer function send_r64_1(client, field, frame, data) result(rc)
    type(pds_client), intent(in) :: client
    character(len=*), intent(in) :: field
    integer(int64), intent(in) :: frame
    real(real64), intent(in), target, contiguous :: data(:)
    rc = c_send_f64(client%ptr, cstr(field), int(frame, c_long), c_loc(data))
  end function send_r64_1

  integer function send_r64_2(client, field, frame, data) result(rc)
    type(pds_client), intent(in) :: client
    character(len=*), intent(in) :: field
    integer(int64), intent(in) :: frame
    real(real64), intent(in), target, contiguous :: data(:, :)
    rc = c_send_f64(client%ptr, cstr(field), int(frame, c_long), c_loc(data))
  end function send_r64_2

  integer function send_r64_3(client, field, frame, data) result(rc)
    type(pds_client), intent(in) :: client
    character(len=*), intent(in) :: field
    integer(int64), intent(in) :: frame
    real(real64), intent(in), target, contiguous :: data(:, :, :)
    rc = c_send_f64(client%ptr, cstr(field), int(frame, c_long), c_loc(data))
  end function send_r64_3

  !> Flush, end the simulation, wait for the trainer and free the client (PDS_OK on success).
  integer function pds_close(client) result(rc)
    type(pds_client), intent(inout) :: client
    rc = c_close(client%ptr)
    client%ptr = c_null_ptr
  end function pds_close

  !> Flush and end the simulation without waiting for the trainer (start the next one, then pds_close).
  integer function pds_end(client) result(rc)
    type(pds_client), intent(in) :: client
    rc = c_end(client%ptr)
  end function pds_end

  !> Disconnect without completing the simulation (the job drops it).
  subroutine pds_abort(client)
    type(pds_client), intent(inout) :: client
    call c_abort(client%ptr)
    client%ptr = c_null_ptr
  end subroutine pds_abort

  !> This thread's last error message ("" when none).
  function pds_last_error() result(msg)
    character(len=:), allocatable :: msg
    character(kind=c_char), pointer :: chars(:)
    type(c_ptr) :: p
    integer :: n, i
    p = c_last_error()
    n = int(c_strlen(p))
    allocate(character(len=n) :: msg)
    if (n == 0) return
    call c_f_pointer(p, chars, [n])
    do i = 1, n
       msg(i:i) = chars(i)
    end do
  end function pds_last_error

  integer function pds_last_code()
    pds_last_code = c_last_code()
  end function pds_last_code

end module pdestream_client
