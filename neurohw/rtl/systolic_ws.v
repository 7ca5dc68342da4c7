// Weight-stationary INT systolic array (R x C PEs): weights stay in the PEs, activations stream from the left,
// partial sums flow down the columns, requantization at the bottom.
// Generated configurations instantiate this module with their parameters (neurohw.rtl.generate).
//
// Timing (the SCALE-Sim fold of neurohw.accel.gemm, dataflow ws: S_r = K, S_c = N, T = M): the weight tile
// W[r, j] = B[k0 + r, j] is written row by row (R cycles); then A[m, k0 + r] is offered at stream cycle m for row r,
// delayed r cycles (skew), so PE (r, j) works on row m at stream cycle m + r + j; the column's sum for row m is
// complete in PE (R-1, j) at stream cycle m + R - 1 + j and emitted at that edge. The stream phase ends with the
// last one (m = M-1, j = C-1): M + R + C - 2 cycles, so
//     busy cycles = R + (M + R + C - 2) = 2R + C + M - 2.
// Row 0 adds a partial sum P[m, j] from the output buffer (the previous K fold's result, or 0), so a GEMM with
// K > R accumulates over folds; with ``last_fold`` the bottom emits y = requant(sum) (module requant of common.v),
// otherwise the raw ACCW-bit sum.
module systolic_ws #(
    parameter R = 4, parameter C = 4, parameter AW = 8, parameter BW = 8, parameter ACCW = 32, parameter OW = 8,
    parameter KW = 16
) (
    input  wire                 clk,
    input  wire                 rst,
    input  wire                 start,      // one-cycle pulse: starts loading a weight tile
    input  wire [KW-1:0]        m_len,      // M, the streamed dimension (>= 1)
    input  wire                 last_fold,      // requantize the outputs (last K fold)
    input  wire signed [31:0]   mult,
    input  wire [5:0]           shift,
    input  wire [C*BW-1:0]      w_row,      // weight row load_index: W[load_index, j] in bits [j*BW +: BW]
    input  wire [R*AW-1:0]      a_row,      // A[feed_index, k0 + r] in bits [r*AW +: AW]
    input  wire [C*ACCW-1:0]    p_row,      // P[stream_index - j, j] in bits [j*ACCW +: ACCW] (0 outside)
    output wire [KW-1:0]        load_index,
    output wire                 loading,
    output wire [KW-1:0]        feed_index, // = stream_index while < M
    output wire                 feed_valid,
    output wire [KW+1:0]        stream_index,
    output reg                  busy,
    output reg                  done,
    output reg  [C-1:0]         out_valid,  // column j emits row out_m[j] this cycle
    output reg  [C*ACCW-1:0]    out_acc,    // raw sums
    output reg  [C*OW-1:0]      out_q       // requantized sums (with last_fold)
);
    localparam SW = KW + 2;
    reg [SW-1:0] cycle;
    reg          streaming;
    wire [SW-1:0] stream_cycles = m_len + R + C - 2;

    assign loading = busy && !streaming;
    assign load_index = cycle[KW-1:0];
    assign stream_index = cycle;
    assign feed_index = cycle[KW-1:0];
    assign feed_valid = busy && streaming && (cycle < m_len);

    reg  signed [BW-1:0]   w [0:R-1][0:C-1];
    reg  signed [AW-1:0]   a_reg [0:R-1][0:C-1];
    reg  signed [ACCW-1:0] p_reg [0:R-1][0:C-1];
    wire signed [AW-1:0]   a_edge [0:R-1];
    wire signed [AW-1:0]   a_op [0:R-1][0:C-1];
    wire signed [ACCW-1:0] p_op [0:R-1][0:C-1];

    genvar r, j;
    generate
        for (r = 0; r < R; r = r + 1) begin : rows
            skew_line #(.W(AW), .D(r)) skew(.clk(clk), .din(feed_valid ? a_row[r*AW +: AW] : {AW{1'b0}}), .dout(a_edge[r]));
        end
        for (r = 0; r < R; r = r + 1) begin : pe_r
            for (j = 0; j < C; j = j + 1) begin : pe_c
                assign a_op[r][j] = (j == 0) ? a_edge[r] : a_reg[r][j-1];
                assign p_op[r][j] = (r == 0) ? ((busy && streaming) ? $signed(p_row[j*ACCW +: ACCW]) : {ACCW{1'b0}})
                                             : p_reg[r-1][j];
                always @(posedge clk) begin
                    if (loading && load_index == r)
                        w[r][j] <= w_row[j*BW +: BW];
                    a_reg[r][j] <= a_op[r][j];
                    p_reg[r][j] <= p_op[r][j] + a_op[r][j] * w[r][j];
                end
            end
        end
    endgenerate

    // column j's sum for row m is formed in PE (R-1, j) during stream cycle m + R - 1 + j and emitted at its edge
    wire signed [ACCW-1:0] colsum [0:C-1];
    wire signed [OW-1:0]   q [0:C-1];
    generate
        for (j = 0; j < C; j = j + 1) begin : bottom
            assign colsum[j] = p_op[R-1][j] + a_op[R-1][j] * w[R-1][j];
            requant #(.ACCW(ACCW), .OW(OW)) rq(.a(colsum[j]), .mult(mult), .shift(shift), .y(q[j]));  // common.v
        end
    endgenerate
    integer c;
    always @(posedge clk) begin
        done <= 1'b0;
        out_valid <= {C{1'b0}};
        if (rst) begin
            busy <= 1'b0;
            streaming <= 1'b0;
            cycle <= 0;
        end else if (start) begin
            busy <= 1'b1;
            streaming <= 1'b0;
            cycle <= 0;
        end else if (busy && !streaming) begin
            if (cycle + 1 == R) begin
                streaming <= 1'b1;
                cycle <= 0;
            end else
                cycle <= cycle + 1;
        end else if (busy && streaming) begin
            for (c = 0; c < C; c = c + 1) begin
                if (cycle >= R - 1 + c && cycle - (R - 1) - c < m_len) begin  // row cycle - (R - 1) - c
                    out_valid[c] <= 1'b1;
                    out_acc[c*ACCW +: ACCW] <= colsum[c];
                    out_q[c*OW +: OW] <= q[c];
                end
            end
            if (cycle + 1 == stream_cycles) begin
                busy <= 1'b0;
                streaming <= 1'b0;
                done <= 1'b1;
            end
            cycle <= cycle + 1;
        end
    end
endmodule
