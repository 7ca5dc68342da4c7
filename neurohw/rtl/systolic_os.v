// Output-stationary INT systolic array (R x C PEs) with accumulators and requantization.
// Generated configurations instantiate this module with their parameters (neurohw.rtl.generate).
//
// Timing (the SCALE-Sim fold of neurohw.accel.gemm, dataflow os): operands A[:, k] and B[k, :] are offered at
// stream cycle k (0 <= k < K); row i of A is delayed i cycles and column j of B j cycles (skew), so PE (i, j)
// multiplies A[i, k] B[k, j] at cycle k + i + j. The last product lands at cycle K + R + C - 3, so compute takes
// K + R + C - 2 cycles; the drain then emits one requantized row per cycle (R cycles):
//     busy cycles = 2R + C + K - 2.
// Requantization of an accumulator (ACCW-bit, two's complement, wrapping): module requant of common.v.
module systolic_os #(
    parameter R = 4, parameter C = 4, parameter AW = 8, parameter BW = 8, parameter ACCW = 32, parameter OW = 8,
    parameter KW = 16
) (
    input  wire                 clk,
    input  wire                 rst,
    input  wire                 start,      // one-cycle pulse: clears the accumulators and starts a tile
    input  wire [KW-1:0]        k_len,      // K, the streamed dimension (>= 1)
    input  wire signed [31:0]   mult,       // requantization multiplier
    input  wire [5:0]           shift,      // requantization shift (>= 1)
    input  wire [R*AW-1:0]      a_col,      // A[:, feed_index], row i in bits [i*AW +: AW]
    input  wire [C*BW-1:0]      b_row,      // B[feed_index, :], column j in bits [j*BW +: BW]
    output wire [KW-1:0]        feed_index, // k that a_col / b_row must hold this cycle
    output wire                 feed_valid, // feed_index < K (inputs are ignored otherwise)
    output reg                  busy,
    output reg                  done,       // one-cycle pulse after the last row
    output reg                  out_valid,
    output reg  [15:0]          out_index,  // row of out_row
    output reg  [C*OW-1:0]      out_row     // requantized row, column j in bits [j*OW +: OW]
);
    localparam CW = KW + 2;
    reg [CW-1:0] cycle;
    reg          draining;
    reg [15:0]   drain_row;
    wire [CW-1:0] compute_cycles = k_len + R + C - 2;

    assign feed_index = cycle[KW-1:0];
    assign feed_valid = busy && !draining && (cycle < k_len);

    // skewed operands entering column 0 (rows) and row 0 (columns)
    wire signed [AW-1:0] a_edge [0:R-1];
    wire signed [BW-1:0] b_edge [0:C-1];
    // operands each PE uses this cycle, and the registers that pass them on
    wire signed [AW-1:0] a_op [0:R-1][0:C-1];
    wire signed [BW-1:0] b_op [0:R-1][0:C-1];
    reg  signed [AW-1:0] a_reg [0:R-1][0:C-1];
    reg  signed [BW-1:0] b_reg [0:R-1][0:C-1];
    reg  signed [ACCW-1:0] acc [0:R-1][0:C-1];

    genvar i, j;
    generate
        for (i = 0; i < R; i = i + 1) begin : rows
            skew_line #(.W(AW), .D(i)) skew(.clk(clk), .din(feed_valid ? a_col[i*AW +: AW] : {AW{1'b0}}), .dout(a_edge[i]));
        end
        for (j = 0; j < C; j = j + 1) begin : cols
            skew_line #(.W(BW), .D(j)) skew(.clk(clk), .din(feed_valid ? b_row[j*BW +: BW] : {BW{1'b0}}), .dout(b_edge[j]));
        end
        for (i = 0; i < R; i = i + 1) begin : pe_r
            for (j = 0; j < C; j = j + 1) begin : pe_c
                assign a_op[i][j] = (j == 0) ? a_edge[i] : a_reg[i][j-1];
                assign b_op[i][j] = (i == 0) ? b_edge[j] : b_reg[i-1][j];
                always @(posedge clk) begin
                    a_reg[i][j] <= a_op[i][j];
                    b_reg[i][j] <= b_op[i][j];
                    if (start)
                        acc[i][j] <= {ACCW{1'b0}};
                    else if (busy && !draining)
                        acc[i][j] <= acc[i][j] + a_op[i][j] * b_op[i][j];
                end
            end
        end
    endgenerate

    // the drain: row drain_row of the accumulators through one requantizer per column (common.v). A row
    // multiplexer (indexing acc[drain_row] would make an address multiplier for widths that are not powers of two)
    wire signed [OW-1:0] q [0:C-1];
    generate
        for (j = 0; j < C; j = j + 1) begin : drain
            reg signed [ACCW-1:0] sel;
            integer rr;
            always @(*) begin
                sel = {ACCW{1'b0}};
                for (rr = 0; rr < R; rr = rr + 1)
                    if (drain_row == rr) sel = acc[rr][j];
            end
            requant #(.ACCW(ACCW), .OW(OW)) rq(.a(sel), .mult(mult), .shift(shift), .y(q[j]));
        end
    endgenerate

    integer c;
    always @(posedge clk) begin
        done <= 1'b0;
        out_valid <= 1'b0;
        if (rst) begin
            busy <= 1'b0;
            draining <= 1'b0;
            cycle <= 0;
        end else if (start) begin
            busy <= 1'b1;
            draining <= 1'b0;
            cycle <= 0;
        end else if (busy && !draining) begin
            if (cycle + 1 == compute_cycles) begin
                draining <= 1'b1;
                drain_row <= 0;
            end
            cycle <= cycle + 1;
        end else if (busy && draining) begin
            for (c = 0; c < C; c = c + 1)
                out_row[c*OW +: OW] <= q[c];
            out_valid <= 1'b1;
            out_index <= drain_row;
            if (drain_row == R - 1) begin
                busy <= 1'b0;
                draining <= 1'b0;
                done <= 1'b1;
            end
            drain_row <= drain_row + 1;
        end
    end
endmodule
